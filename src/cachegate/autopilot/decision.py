"""A decision (advance, hold, roll back, complete) and how one state's gates make it.

A state is a stage of a stage plan or a state of a track; both controllers judge it the same
way: settle, evaluate its gates over the time since it began (cut at its start, so data of a
state rolled back from is never judged again), count consecutive failures, then roll back on a
failing gate at its limit, hold while a gate fails or holds or the observation is short,
complete at the last state, and advance otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field, replace
from enum import StrEnum
from typing import Protocol

from cachegate.autopilot.gates import (
    GateResult,
    MetricsReader,
    MetricsUnavailable,
    Verdict,
    evaluate,
)
from cachegate.autopilot.plan import GateSpec, OnFail, Plan

__all__ = ["KILL_SWITCH", "Action", "Autopilot", "Decision", "Failures", "State"]

KILL_SWITCH = "kill-switch"
"""The rollback target when there is no earlier stage, or when asked for explicitly."""


class Action(StrEnum):
    """What a decision does."""

    ADVANCE = "advance"
    HOLD = "hold"
    ROLLBACK = "rollback"
    COMPLETE = "complete"


@dataclass(frozen=True, slots=True)
class Decision:
    """One evaluation and what came of it, with the figures behind it.

    `code` is the low-cardinality reason used as a metric label; `reason` is for people.
    `applied` is False for a dry run, for `status`, and when nothing was to be moved.
    """

    at: float
    stage: str | None
    action: Action
    code: str
    reason: str
    target: str | None = None
    elapsed: float | None = None
    gates: tuple[GateResult, ...] = ()
    applied: bool = False
    dry_run: bool = False
    track: str | None = None
    """The track this decision is about (a track plan); None for a plan of whole stages."""

    def hold(self, code: str, reason: str) -> Decision:
        """This decision as a hold, for `reason`."""
        return replace(self, action=Action.HOLD, target=None, code=code, reason=reason)

    def move(self, action: Action, target: str | None, code: str, reason: str) -> Decision:
        """This decision as `action` (to `target`), for `reason`."""
        return replace(self, action=action, target=target, code=code, reason=reason)


class State(Protocol):
    """A stage, or a state of a track: what judging reads of it."""

    @property
    def name(self) -> str:
        """Its name in the plan."""
        ...

    @property
    def min_observation(self) -> float:
        """Seconds to watch it, at least, before advancing."""
        ...

    @property
    def gates(self) -> tuple[GateSpec, ...]:
        """Its gates."""
        ...


@dataclass
class Failures:
    """Consecutive failures of each gate of one state; entering another state starts from none.

    Only the process keeps them: a restart resets them, which delays a rollback by at most
    `failure_limit` steps.
    """

    state: str | None = None
    counts: dict[str, int] = field(default_factory=dict)

    def enter(self, state: str) -> None:
        """Count for `state` from now on (from none if it is another state)."""
        if self.state != state:
            self.counts = {}
            self.state = state

    def after(self, results: Sequence[GateResult]) -> dict[str, int]:
        """The counts once `results` are taken in: a failure adds one, anything else resets."""
        counts = dict(self.counts)
        for result in results:
            counts[result.gate] = (
                counts.get(result.gate, 0) + 1 if result.verdict is Verdict.FAIL else 0
            )
        return counts


@dataclass
class Autopilot:
    """What both controllers are: a plan, the reader its gates read from, a clock, and whether
    this is a dry run; and how they judge one state."""

    plan: Plan
    reader: MetricsReader
    _: KW_ONLY
    clock: Callable[[], float] = time.time
    dry_run: bool = False

    def manual_rollback(
        self, at: float, current: str | None, target: str, track: str | None = None
    ) -> Decision:
        """The decision of a rollback a person asked for, from `current` to `target`."""
        return Decision(
            at=at,
            stage=current,
            action=Action.ROLLBACK,
            code="manual",
            reason=f"rollback asked for: to {target}",
            target=target,
            dry_run=self.dry_run,
            track=track,
        )

    def judge(
        self,
        base: Decision,
        order: Sequence[State],
        position: int,
        *,
        since: float,
        failures: Failures,
        count: bool,
        noun: str,
    ) -> Decision:
        """Decide on `order[position]`, which began at `since` (`base.elapsed` seconds ago).

        `count` takes the results into `failures` (a step); without it (status) nothing
        changes. `noun` names a state in the reasons: `stage` or `state`.
        """
        current = order[position]
        if count:
            failures.enter(current.name)
        assert base.elapsed is not None
        observed = base.elapsed - self.plan.settle
        if observed < 1.0:
            return base.hold("settling", f"{noun} began {base.elapsed:.0f}s ago; clients settle")
        try:
            results = tuple(
                evaluate(
                    gate,
                    self.reader,
                    window=min(gate.window, observed),
                    selector=self.plan.selector,
                    baseline_at=since,
                )
                for gate in current.gates
            )
        except MetricsUnavailable as exc:
            return base.hold("metrics_unavailable", f"no metrics: {exc}")
        base = replace(base, gates=results)
        counts = failures.after(results)
        if count:
            failures.counts = counts
        gates = {gate.name: gate for gate in current.gates}
        for result in results:
            gate = gates[result.gate]
            reached = counts[result.gate] >= gate.failure_limit
            if result.verdict is not Verdict.FAIL or not reached:
                continue
            if result.on_fail is not OnFail.ROLLBACK:
                continue
            why = f"{result.gate}: {result.reason}"
            if position == 0:
                return base.hold("gate_failed", f"{why} (first {noun}: nothing to undo)")
            target = order[position - 1].name
            names = [state.name for state in order]
            if gate.rollback_to is not None and names.index(gate.rollback_to) < position:
                target = gate.rollback_to
            return base.move(Action.ROLLBACK, target, "gate_failed", why)
        waiting = _not_yet(base, results, counts, gates, current.min_observation)
        if waiting is not None:
            return waiting
        if position == len(order) - 1:
            return base.move(Action.COMPLETE, None, "complete", f"last {noun}, gates pass")
        following = order[position + 1].name
        passed = f"every gate passes after {base.elapsed:.0f}s: on to {following}"
        return base.move(Action.ADVANCE, following, "gates_passed", passed)


def _not_yet(
    base: Decision,
    results: Sequence[GateResult],
    counts: dict[str, int],
    gates: dict[str, GateSpec],
    min_observation: float,
) -> Decision | None:
    """Why a state that rolls nothing back does not advance yet: a failing gate (with its count
    against its limit), a holding gate, or too short an observation; None when every gate
    passes and it has been observed long enough."""
    for result in results:
        if result.verdict is Verdict.FAIL:
            seen = f"{counts[result.gate]}/{gates[result.gate].failure_limit}"
            code = "gate_failing" if result.on_fail is OnFail.ROLLBACK else "gate_failed"
            return base.hold(code, f"{result.gate}: {result.reason} ({seen})")
    for result in results:
        if result.verdict is Verdict.HOLD:
            return base.hold("gate_holding", f"{result.gate}: {result.reason}")
    assert base.elapsed is not None
    if base.elapsed < min_observation:
        observed = f"gates pass; observed {base.elapsed:.0f}s of {min_observation:.0f}s"
        return base.hold("observing", observed)
    return None
