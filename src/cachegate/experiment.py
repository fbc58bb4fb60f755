"""Shadow, verify and noise runs as one experiment, in github/scientist's terms: the control is
a fresh answer, the candidate the cached one (or, for noise, a second fresh one); they are
compared with the policy's comparator and the result is published at one point.

One ignore rule: a mismatch explained by a write to the cache scope while the control was
computed says nothing about staleness (the fresh answer moved, not the cache), so it is
ignored, neither counted nor logged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cachegate import tracing
from cachegate.comparators import Comparator, Comparison, MismatchLog, Outcome, compare
from cachegate.metrics import Metrics
from cachegate.vocabulary import ComparisonKind, Layer


@dataclass(frozen=True, slots=True)
class Observation:
    """What one side produced: the answer's content, or None when it could not be recorded
    (the app failed, answered an error, or the answer was not storable)."""

    content: bytes | None


@dataclass(frozen=True, slots=True)
class Experiment:
    """One comparison of a route's answers, published to metrics, a span and the mismatch log."""

    kind: ComparisonKind
    route: str
    comparator: Comparator
    metrics: Metrics
    mismatches: MismatchLog
    layer: Layer = Layer.RESULT

    async def run(
        self,
        candidate: bytes,
        control: Observation,
        *,
        write_during: Callable[[], Awaitable[bool]] | None = None,
    ) -> Outcome | None:
        """Compare and publish; None when ignored (`write_during()` says the scope was written
        while the control was computed)."""
        if control.content is None:
            comparison = compare(_control_failed, candidate, b"")
        else:
            comparison = compare(self.comparator, candidate, control.content)
        if (
            comparison.outcome is Outcome.MISMATCH
            and write_during is not None
            and await write_during()
        ):
            return None
        self.publish(comparison, candidate, control.content or b"")
        return comparison.outcome

    def publish(self, comparison: Comparison, candidate: bytes, control: bytes) -> None:
        """The one place a comparison becomes a counter, a span and, for a mismatch, a log entry."""
        outcome = comparison.outcome
        span = tracing.tracer.start_span("cachegate.compare")
        if span.is_recording():
            span.set_attributes(
                {
                    tracing.LAYER: self.layer.value,
                    tracing.ROUTE: self.route,
                    tracing.OUTCOME: outcome.value,
                    tracing.COMPARISON: self.kind.value,
                }
            )
        span.end()
        self.metrics.comparisons.labels(self.layer.value, self.kind.value, outcome.value).inc()
        if outcome is Outcome.MISMATCH:
            self.mismatches.record(
                route=self.route,
                kind=self.kind.value,
                cached=candidate,
                fresh=control,
                comparison=comparison,
            )


def _control_failed(cached: bytes, fresh: bytes) -> Comparison:
    raise RuntimeError("the fresh answer could not be recorded")
