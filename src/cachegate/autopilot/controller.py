"""The controller of a plan of whole stages: from the stage Unleash holds to one decision.

Stateless across restarts by design: the current stage and when it began are read from Unleash
on every step, and every gate's window is cut at the stage's start (plus `settle`), so data of a
stage rolled back from is never judged again. Only the consecutive-failure counts live in the
process (see `decision.Failures`). The kill switch always wins: while it is on, the controller
holds and touches nothing. How a stage's gates make a decision is `decision.judge`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol

from cachegate.autopilot.decision import (
    KILL_SWITCH,
    Action,
    Autopilot,
    Decision,
    Failures,
)
from cachegate.autopilot.plan import PlanError
from cachegate.flags import ServerStage

__all__ = ["KILL_SWITCH", "Action", "Controller", "Decision", "StageStore"]

_KILL_SWITCH_ON = "the kill switch is on: the autopilot holds until a person turns it off"
_UNKNOWN_STAGE = (
    "the flags match no stage of the plan (changed by hand?); "
    "apply a stage with `cachegate flags apply` first"
)


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


@dataclass
class Controller(Autopilot):
    """Evaluates the current stage's gates and advances, holds or rolls back."""

    stages: StageStore
    _failures: Failures = field(default_factory=Failures)

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
            self._failures.counts = {}
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
        decision = self.manual_rollback(now, server.stage, target)
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
        base = Decision(at=now, stage=stage, action=Action.HOLD, code="", reason="")
        if server.kill_switch:
            return base.hold("kill_switch", _KILL_SWITCH_ON)
        if stage is None or not self.plan.has_stage(stage):
            return base.hold("unknown_stage", _UNKNOWN_STAGE)
        if server.changed_at is None:
            return base.hold("unknown_start", "Unleash has no record of when this stage began")
        return self.judge(
            replace(base, elapsed=max(now - server.changed_at, 0.0)),
            self.plan.stages,
            self.plan.index(stage),
            since=server.changed_at,
            failures=self._failures,
            count=count,
            noun="stage",
        )
