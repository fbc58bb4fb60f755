"""Gate evaluation: thresholds, Wilson bounds, noise subtraction, no data, NaN, small samples.

Figures come from a table keyed by query fragments (what Prometheus would answer); the gates
are pure functions of those figures. The real Prometheus is used in `test_autopilot_e2e.py`.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachegate.autopilot.gates import (
    MetricsUnavailable,
    Verdict,
    evaluate,
    render_query,
)
from cachegate.autopilot.plan import GateKind, GateSpec, OnFail
from cachegate.autopilot.stats import wilson_interval


class Figures:
    """Answers a query with the value of the first fragment it contains (None: no data)."""

    def __init__(self, values: dict[str, float | None], baseline: dict[str, float] | None = None):
        self.values = values
        self.baseline = baseline or {}
        self.queries: list[tuple[str, float | None]] = []

    def query(self, expr: str, *, at: float | None = None) -> float | None:
        self.queries.append((expr, at))
        table: dict[str, float | None] = dict(self.baseline) if at is not None else self.values
        for fragment, value in table.items():
            if fragment in expr:
                return value
        return None


def agreement(**overrides: object) -> GateSpec:
    values: dict[str, object] = {
        "name": "l1-agreement",
        "kind": GateKind.AGREEMENT,
        "window": 600.0,
        "layer": "query_result",
        "max_excess": 0.01,
        "min_sample": 100,
        "on_fail": OnFail.ROLLBACK,
    }
    values.update(overrides)
    return GateSpec(**values)  # type: ignore[arg-type]


def comparisons(
    mismatch: float | None, total: float | None, noise: float = 0.0, noise_total: float = 0.0
) -> Figures:
    return Figures(
        {
            'kind=~"shadow|verify",outcome=~"mismatch"': mismatch,
            'kind=~"shadow|verify",outcome=~"match|mismatch"': total,
            'kind=~"noise",outcome=~"mismatch"': noise,
            'kind=~"noise",outcome=~"match|mismatch"': noise_total,
        }
    )


def test_wilson_bounds_known_values() -> None:
    low, high = wilson_interval(0, 100, 0.95)
    assert low == 0.0
    assert high == pytest.approx(0.0370, abs=1e-4)
    low, high = wilson_interval(10, 100, 0.95)
    assert (low, high) == (pytest.approx(0.0552, abs=1e-4), pytest.approx(0.1744, abs=1e-4))
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(math.nan, 10)


@given(
    st.integers(min_value=0, max_value=10_000),
    st.integers(min_value=1, max_value=10_000),
    st.sampled_from([0.8, 0.9, 0.95, 0.99]),
)
def test_wilson_interval_contains_the_ratio_and_narrows_with_confidence(
    events: int, trials: int, confidence: float
) -> None:
    events = min(events, trials)
    low, high = wilson_interval(events, trials, confidence)
    assert 0.0 <= low <= events / trials <= high <= 1.0
    wider = wilson_interval(events, trials, 0.999)
    assert wider[0] <= low + 1e-12 and wider[1] >= high - 1e-12


def test_agreement_passes_only_when_the_upper_bound_is_below_the_limit() -> None:
    # 0 mismatches in 300: the upper bound is about 1.26 %, above a 1 % limit -> undecided.
    result = evaluate(agreement(), comparisons(0, 300), window=600)
    assert result.verdict is Verdict.HOLD
    assert "not established" in result.reason
    # The same raw ratio (0 %) with 1000 comparisons: the bound is 0.38 % -> pass.
    result = evaluate(agreement(), comparisons(0, 1000), window=600)
    assert result.verdict is Verdict.PASS
    assert result.bound == pytest.approx(wilson_interval(0, 1000)[1])


def test_agreement_fails_when_even_the_lower_bound_is_above_the_limit() -> None:
    result = evaluate(agreement(), comparisons(40, 400), window=600)
    assert result.verdict is Verdict.FAIL
    assert result.reason.startswith("agreement below bound")
    assert result.figure == pytest.approx(0.10)


def test_noise_baseline_is_subtracted() -> None:
    # 5 % mismatches that fresh-vs-fresh comparisons show as well: nondeterminism, not staleness.
    noisy = comparisons(100, 2000, noise=100, noise_total=2000)
    assert evaluate(agreement(max_excess=0.02), noisy, window=600).verdict is Verdict.PASS
    # Without the noise measurement the same figures fail.
    bare = comparisons(100, 2000)
    assert evaluate(agreement(max_excess=0.02), bare, window=600).verdict is Verdict.FAIL


@pytest.mark.parametrize(
    ("mismatch", "total", "reason"),
    [
        (None, None, "no data"),
        (0, None, "no data"),
        (math.nan, 1000, "nan"),
        (0, math.nan, "nan"),
        (0, 99, "too small a sample"),
        (0, 0, "too small a sample"),
    ],
)
def test_agreement_without_enough_data_holds(
    mismatch: float | None, total: float | None, reason: str
) -> None:
    result = evaluate(agreement(), comparisons(mismatch, total), window=600)
    assert result.verdict is Verdict.HOLD
    assert reason in result.reason.lower()


def test_a_small_sample_holds_even_when_every_comparison_failed() -> None:
    result = evaluate(agreement(), comparisons(50, 50), window=600)
    assert result.verdict is Verdict.HOLD


def proportion(**overrides: object) -> GateSpec:
    values: dict[str, object] = {
        "name": "store-failures",
        "kind": GateKind.PROPORTION,
        "window": 300.0,
        "events": "failed[$window]",
        "total": "all[$window]",
        "max": 0.01,
        "min_sample": 100,
    }
    values.update(overrides)
    return GateSpec(**values)  # type: ignore[arg-type]


def test_proportion_max_and_min() -> None:
    assert evaluate(proportion(), Figures({"failed": 0, "all": 2000}), window=300).verdict is (
        Verdict.PASS
    )
    assert evaluate(proportion(), Figures({"failed": 200, "all": 2000}), window=300).verdict is (
        Verdict.FAIL
    )
    assert evaluate(proportion(), Figures({"failed": 3, "all": 200}), window=300).verdict is (
        Verdict.HOLD
    )
    hit_rate = proportion(max=None, min=0.30, on_fail=OnFail.HOLD)
    assert evaluate(hit_rate, Figures({"failed": 900, "all": 2000}), window=300).verdict is (
        Verdict.PASS
    )
    assert evaluate(hit_rate, Figures({"failed": 100, "all": 2000}), window=300).verdict is (
        Verdict.FAIL
    )
    assert evaluate(hit_rate, Figures({"failed": 10, "all": 20}), window=300).verdict is (
        Verdict.HOLD
    )


def threshold(**overrides: object) -> GateSpec:
    values: dict[str, object] = {
        "name": "breaker-open",
        "kind": GateKind.THRESHOLD,
        "window": 300.0,
        "value": "breaker[$window]",
        "max": 0.05,
    }
    values.update(overrides)
    return GateSpec(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "verdict"),
    [
        (0.0, Verdict.PASS),
        (0.05, Verdict.PASS),
        (0.2, Verdict.FAIL),
        (None, Verdict.HOLD),
        (math.nan, Verdict.HOLD),
        (math.inf, Verdict.HOLD),
    ],
)
def test_threshold(value: float | None, verdict: Verdict) -> None:
    assert evaluate(threshold(), Figures({"breaker": value}), window=300).verdict is verdict


def comparison(**overrides: object) -> GateSpec:
    values: dict[str, object] = {
        "name": "latency-p95",
        "kind": GateKind.COMPARISON,
        "window": 300.0,
        "value": "p95[$window]",
        "count": "requests[$window]",
        "max_increase": 0.10,
        "min_sample": 100,
    }
    values.update(overrides)
    return GateSpec(**values)  # type: ignore[arg-type]


def test_comparison_against_the_stage_before() -> None:
    spec = comparison()
    better = Figures({"p95": 0.8, "requests": 500}, baseline={"p95": 1.0})
    assert evaluate(spec, better, window=300, baseline_at=1000.0).verdict is Verdict.PASS
    assert better.queries[-1][1] == 1000.0
    worse = Figures({"p95": 1.2, "requests": 500}, baseline={"p95": 1.0})
    assert evaluate(spec, worse, window=300, baseline_at=1000.0).verdict is Verdict.FAIL
    no_baseline = Figures({"p95": 0.8, "requests": 500}, baseline={"p95": math.nan})
    result = evaluate(spec, no_baseline, window=300, baseline_at=1000.0)
    assert result.verdict is Verdict.HOLD and "baseline" in result.reason
    assert evaluate(spec, better, window=300).verdict is Verdict.HOLD
    quiet = Figures({"p95": 0.8, "requests": 20}, baseline={"p95": 1.0})
    assert evaluate(spec, quiet, window=300, baseline_at=1000.0).verdict is Verdict.HOLD


def test_sample_gate_holds_without_traffic() -> None:
    spec = GateSpec(
        name="traffic", kind=GateKind.SAMPLE, window=60, count="requests[$window]", min_sample=100
    )
    assert evaluate(spec, Figures({"requests": 500}), window=60).verdict is Verdict.PASS
    result = evaluate(spec, Figures({"requests": 3}), window=60)
    assert result.verdict is Verdict.HOLD and "too little traffic" in result.reason
    assert evaluate(spec, Figures({}), window=60).verdict is Verdict.HOLD


def test_unavailable_metrics_propagate() -> None:
    class Down:
        def query(self, expr: str, *, at: float | None = None) -> float | None:
            raise MetricsUnavailable("connection refused")

    with pytest.raises(MetricsUnavailable):
        evaluate(agreement(), Down(), window=60)


def test_render_query() -> None:
    assert render_query('x{a="b",$selector}[$window]', window=90.7, selector="") == 'x{a="b"}[90s]'
    assert render_query("x{$selector}[$window]", window=0.2, selector='job="j"') == 'x{job="j"}[1s]'
    assert render_query("x{$selector}[$window]", window=5, selector="") == "x[5s]"
