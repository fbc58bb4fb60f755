"""Confidence bounds of a rate measured as `events` out of `trials` (Wilson score interval).

The Wilson interval keeps its coverage for small samples and rates near 0, where the plain
ratio (0 mismatches in 20 comparisons is "0 %") would claim far more than the data shows.
"""

from __future__ import annotations

import math
from statistics import NormalDist

__all__ = ["wilson_interval", "z_score"]


def z_score(confidence: float) -> float:
    """The two-sided normal quantile of `confidence` (0.95 gives 1.96)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, not {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(events: float, trials: float, confidence: float = 0.95) -> tuple[float, float]:
    """The (lower, upper) bound of the true rate; (0, 1) when there are no trials.

    `events` and `trials` may be the fractional counts Prometheus' `increase()` extrapolates;
    `events` is clamped to [0, trials]. Raises ValueError for NaN or negative trials.
    """
    if math.isnan(events) or math.isnan(trials) or trials < 0:
        raise ValueError(f"counts must be numbers >= 0, not {events}/{trials}")
    if trials == 0:
        return 0.0, 1.0
    events = min(max(events, 0.0), trials)
    z = z_score(confidence)
    p = events / trials
    z2 = z * z
    denominator = 1.0 + z2 / trials
    centre = (p + z2 / (2.0 * trials)) / denominator
    margin = z * math.sqrt(p * (1.0 - p) / trials + z2 / (4.0 * trials * trials)) / denominator
    low = 0.0 if events == 0 else min(max(0.0, centre - margin), p)
    high = 1.0 if events == trials else max(min(1.0, centre + margin), p)
    return low, high
