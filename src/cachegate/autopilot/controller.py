"""The controller: from the stage Unleash holds and the gates' verdicts to one decision.

Stateless across restarts by design: the current stage and when it began are read from Unleash
on every step, and every gate's window is cut at the stage's start (plus `settle`), so data of a
stage rolled back from is never judged again. Only the consecutive-failure counts live in the
process; a restart resets them, which delays a rollback by at most `failure_limit` steps.
The kill switch always wins: while it is on, the controller holds and touches nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Protocol

from cachegate.autopilot.gates import (
    GateResult,
    MetricsReader,
    MetricsUnavailable,
    Verdict,
    evaluate,
)
from cachegate.autopilot.plan import OnFail, Plan, PlanError, StagePlan
from cachegate.flags import ServerStage

__all__ = ["KILL_SWITCH", "Action", "Controller", "Decision", "StageStore"]

KILL_SWITCH = "kill-switch"
"""The rollback target when there is no earlier stage, or when asked for explicitly."""


class StageStore(Protocol):
    """Where the stage lives (Unleash): read it, move it, pull the kill switch."""

    def read(self) -> ServerStage:
        """The current stage, the kill switch and when the flags last changed."""
        ...

    def apply(self, stage: str) -> None:
        """Move every client to `stage` without an intermediate mix."""
        ...

    def kill(self) -> None:
        """Turn the kill switch on."""
        ...


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


@dataclass
class Controller:
    """Evaluates the current stage's gates and advances, holds or rolls back."""

    plan: Plan
    reader: MetricsReader
    stages: StageStore
    clock: Callable[[], float] = time.time
    dry_run: bool = False
    _failures: dict[str, int] = field(default_factory=dict)
    _failures_stage: str | None = None

    def __post_init__(self) -> None:
        if self.plan.tracks:
            raise PlanError(
                f"{self.plan.source}: a plan of [[tracks]] is run by "
                "cachegate.autopilot.tracks.TrackController, not by stages"
            )

    def status(self) -> Decision:
        """What `step` would decide now, without counting failures or acting."""
        return self._decide(count=False)

    def step(self) -> Decision:
        """Evaluate once and act on the decision (unless this is a dry run)."""
        decision = self._decide(count=True)
        if decision.action in (Action.ADVANCE, Action.ROLLBACK) and not self.dry_run:
            assert decision.target is not None
            self._move(decision.target)
            self._failures.clear()
            return replace(decision, applied=True)
        return replace(decision, dry_run=self.dry_run)

    def rollback(self, *, kill_switch: bool = False) -> Decision:
        """Go to the stage before the current one (the last good one), or pull the kill switch
        (`kill_switch`, or when there is no earlier stage or the state is unknown)."""
        now = self.clock()
        server = self.stages.read()
        target = KILL_SWITCH
        if not kill_switch and server.stage is not None and self.plan.has_stage(server.stage):
            position = self.plan.index(server.stage)
            if position > 0:
                target = self.plan.stages[position - 1].name
        decision = Decision(
            at=now,
            stage=server.stage,
            action=Action.ROLLBACK,
            code="manual",
            reason=f"rollback asked for: to {target}",
            target=target,
            dry_run=self.dry_run,
        )
        if not self.dry_run:
            self._move(target)
            return replace(decision, applied=True)
        return decision

    def _move(self, target: str) -> None:
        if target == KILL_SWITCH:
            self.stages.kill()
        else:
            self.stages.apply(target)

    def _decide(self, *, count: bool) -> Decision:
        now = self.clock()
        server = self.stages.read()
        stage = server.stage
        if server.kill_switch:
            return Decision(
                at=now,
                stage=stage,
                action=Action.HOLD,
                code="kill_switch",
                reason="the kill switch is on: the autopilot holds until a person turns it off",
            )
        if stage is None or not self.plan.has_stage(stage):
            return Decision(
                at=now,
                stage=stage,
                action=Action.HOLD,
                code="unknown_stage",
                reason="the flags match no stage of the plan (changed by hand?); "
                "apply a stage with `cachegate flags apply` first",
            )
        if server.changed_at is None:
            return Decision(
                at=now,
                stage=stage,
                action=Action.HOLD,
                code="unknown_start",
                reason="Unleash has no record of when this stage began",
            )
        elapsed = max(now - server.changed_at, 0.0)
        current = self.plan.stage(stage)
        if count and self._failures_stage != stage:
            self._failures.clear()
            self._failures_stage = stage
        base = Decision(
            at=now, stage=stage, action=Action.HOLD, code="", reason="", elapsed=elapsed
        )
        observed = elapsed - self.plan.settle
        if observed < 1.0:
            return replace(
                base, code="settling", reason=f"stage began {elapsed:.0f}s ago; clients settle"
            )
        try:
            results = tuple(
                evaluate(
                    gate,
                    self.reader,
                    window=min(gate.window, observed),
                    selector=self.plan.selector,
                    baseline_at=server.changed_at,
                )
                for gate in current.gates
            )
        except MetricsUnavailable as exc:
            return replace(base, code="metrics_unavailable", reason=f"no metrics: {exc}")
        return self._judge(base, current, results, count=count)

    def _judge(
        self, base: Decision, current: StagePlan, results: tuple[GateResult, ...], *, count: bool
    ) -> Decision:
        base = replace(base, gates=results)
        failures = dict(self._failures)
        for result in results:
            failed = result.verdict is Verdict.FAIL
            failures[result.gate] = failures.get(result.gate, 0) + 1 if failed else 0
        if count:
            self._failures = failures
        limits = {gate.name: gate.failure_limit for gate in current.gates}
        rollback_to = {gate.name: gate.rollback_to for gate in current.gates}
        position = self.plan.index(current.name)
        for result in results:
            if result.verdict is not Verdict.FAIL:
                continue
            reached = failures[result.gate] >= limits[result.gate]
            if result.on_fail is OnFail.ROLLBACK and reached:
                target = self.plan.stages[position - 1].name if position > 0 else None
                wanted = rollback_to.get(result.gate)
                if wanted is not None and self.plan.index(wanted) < position:
                    target = wanted
                if target is None:
                    return replace(
                        base,
                        code="gate_failed",
                        reason=f"{result.gate}: {result.reason} (first stage: nothing to undo)",
                    )
                return replace(
                    base,
                    action=Action.ROLLBACK,
                    target=target,
                    code="gate_failed",
                    reason=f"{result.gate}: {result.reason}",
                )
        waiting = not_yet(base, results, failures, limits, current.min_observation)
        if waiting is not None:
            return waiting
        if position == len(self.plan.stages) - 1:
            return replace(
                base, action=Action.COMPLETE, code="complete", reason="last stage, gates pass"
            )
        target = self.plan.stages[position + 1].name
        return replace(
            base,
            action=Action.ADVANCE,
            target=target,
            code="gates_passed",
            reason=f"every gate passes after {base.elapsed:.0f}s: on to {target}",
        )


def not_yet(
    base: Decision,
    results: Sequence[GateResult],
    failures: Mapping[str, int],
    limits: Mapping[str, int],
    min_observation: float,
) -> Decision | None:
    """Why a stage (or a track's state) that rolls nothing back does not advance yet: a failing
    gate (with its count against its limit), a holding gate, or too short an observation; None
    when every gate passes and it has been observed long enough."""
    for result in results:
        if result.verdict is Verdict.FAIL:
            seen = f"{failures[result.gate]}/{limits[result.gate]}"
            code = "gate_failing" if result.on_fail is OnFail.ROLLBACK else "gate_failed"
            return replace(base, code=code, reason=f"{result.gate}: {result.reason} ({seen})")
    for result in results:
        if result.verdict is Verdict.HOLD:
            return replace(base, code="gate_holding", reason=f"{result.gate}: {result.reason}")
    assert base.elapsed is not None
    if base.elapsed < min_observation:
        return replace(
            base,
            code="observing",
            reason=f"gates pass; observed {base.elapsed:.0f}s of {min_observation:.0f}s",
        )
    return None
