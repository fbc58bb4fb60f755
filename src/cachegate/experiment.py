"""Shadow, verify and noise runs as one experiment, in github/scientist's terms: the control is
a fresh answer, the candidate the cached one (or, for noise, a second fresh one); they are
compared with the policy's comparator and the result is published at one point.

One ignore rule: a mismatch explained by a write to the cache scope while the control was
computed says nothing about staleness (the fresh answer moved, not the cache), so it is
left out of the outcomes and the log, and only counted as ignored.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cachegate import tracing
from cachegate.body import RequestBody
from cachegate.comparators import Comparator, Comparison, MismatchLog, Outcome, compare
from cachegate.keying import RequestFacts
from cachegate.metrics import Metrics
from cachegate.policy import Policy
from cachegate.responses import ResponseRecorder, answer_content
from cachegate.results import ResultCache
from cachegate.store.codec import Entry
from cachegate.types import ASGIApp, Scope
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
            self.metrics.comparisons_ignored.labels(self.layer.value, self.kind.value).inc()
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


class Experiments:
    """A cached route's three experiments on L1. `shadow` compares a looked-up entry with the
    fresh answer just served; `verify` recomputes a served hit in the background and drops it
    if stale; `noise` computes a fresh answer twice, the baseline the other two are read
    against. Background runs are recorded and judged, never sent."""

    def __init__(
        self,
        app: ASGIApp,
        policy: Policy,
        results: ResultCache,
        mismatches: MismatchLog,
        max_entry_bytes: int,
    ) -> None:
        self.app = app
        self.policy = policy
        self.results = results
        self.mismatches = mismatches
        self.max_entry_bytes = max_entry_bytes

    def recorder(self) -> ResponseRecorder:
        """A recorder of a fresh answer that is not sent, under this route's limits."""
        return ResponseRecorder(None, max_bytes=self.max_entry_bytes, streams=self.policy.streams)

    async def shadow(
        self, entry: Entry, fresh: ResponseRecorder, facts: RequestFacts, since: tuple[int, ...]
    ) -> Outcome | None:
        """Compare a looked-up entry with the fresh answer served instead."""
        cached = answer_content(entry.body, entry.headers)
        return await self._run(ComparisonKind.SHADOW, cached, fresh, facts, since)

    async def verify(
        self, entry: Entry, facts: RequestFacts, scope: Scope, body: RequestBody
    ) -> None:
        """Recompute a served hit and compare; a stale entry is dropped."""
        fresh = await self._rerun(scope, body)
        cached = answer_content(entry.body, entry.headers)
        outcome = await self._run(ComparisonKind.VERIFY, cached, fresh, facts, entry.generations)
        if outcome is Outcome.MISMATCH:
            await self.results.drop(facts)

    async def noise(self, first: bytes, scope: Scope, body: RequestBody) -> None:
        """Compute the same request again and compare fresh with fresh."""
        await self._run(ComparisonKind.NOISE, first, await self._rerun(scope, body))

    async def _rerun(self, scope: Scope, body: RequestBody) -> ResponseRecorder:
        recorder = self.recorder()
        try:
            await self.app(_copy(scope), body.rerun(), recorder)
        except BaseException as error:
            recorder.finish(error)
            raise
        recorder.finish()
        return recorder

    async def _run(
        self,
        kind: ComparisonKind,
        candidate: bytes,
        control: ResponseRecorder,
        facts: RequestFacts | None = None,
        since: tuple[int, ...] | None = None,
    ) -> Outcome | None:
        """One experiment; with `facts`, a write to the scope since `since` explains a
        mismatch away."""
        experiment = Experiment(
            kind, self.policy.route, self.policy.comparator, self.results.metrics, self.mismatches
        )
        fresh = answer_content(control.body, control.headers) if control.storable else None
        write_during = None
        if facts is not None and since is not None:
            checked_facts, checked_since = facts, since

            async def write_during() -> bool:
                return await self.results.changed_since(checked_facts, checked_since)

        return await experiment.run(candidate, Observation(fresh), write_during=write_during)


def _copy(scope: Scope) -> Scope:
    """A scope for a background re-run: its own `state`, so the app's writes stay apart."""
    copied = dict(scope)
    copied["state"] = dict(scope.get("state", {}))
    return copied


def _control_failed(cached: bytes, fresh: bytes) -> Comparison:
    raise RuntimeError("the fresh answer could not be recorded")
