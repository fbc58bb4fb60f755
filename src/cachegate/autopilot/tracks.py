"""Per-layer tracks: each layer advances, holds and rolls back on its own gates.

With a track plan (`[[tracks]]` in the plan) the controller decides once per track per step:
the track's state and start come from Unleash (`layers.UnleashLayers`), its gates are judged as
a stage's are, and a move touches only that track's flags. One track rolling back never moves
the other. A state with `requires = "l2:serve"` is entered only once that track is there (read
before this step's moves, so two tracks never advance on each other's strength in one step).
The kill switch always wins: while it is on, every track holds with code `kill_switch`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from cachegate.autopilot.decision import (
    KILL_SWITCH,
    Action,
    Autopilot,
    Decision,
    Failures,
)
from cachegate.autopilot.layers import LayersView, TrackView
from cachegate.autopilot.plan import PlanError, TrackPlan, TrackState

__all__ = ["LayerStore", "TrackController"]

_KILL_SWITCH_ON = "the kill switch is on: every track holds until a person turns it off"
_KILLED_BEFORE_MOVE = "the kill switch went on before the move: nothing moved"


class LayerStore(Protocol):
    """Where the tracks live (Unleash): read them, move one, pull the kill switch."""

    def read(self) -> LayersView:
        """Every track's state and start, and the kill switch."""
        ...

    def apply(self, track: TrackPlan, state: TrackState) -> bool:
        """Move `track`'s flags to `state` atomically; False (nothing moved) under the kill
        switch."""
        ...

    def kill(self) -> None:
        """Turn the kill switch on."""
        ...


@dataclass
class TrackController(Autopilot):
    """Evaluates each track's current state and advances, holds or rolls it back."""

    store: LayerStore
    _failures: dict[str, Failures] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.plan.tracks:
            raise PlanError(f"{self.plan.source}: the plan has no [[tracks]]; use Controller")

    def status(self) -> tuple[Decision, ...]:
        """What `step` would decide now for every track, without counting or acting."""
        view = self.store.read()
        return tuple(self._decide(track, view, count=False) for track in self.plan.tracks)

    def step(self) -> tuple[Decision, ...]:
        """Evaluate every track once and act on each decision (unless a dry run)."""
        view = self.store.read()
        decisions = [self._decide(track, view, count=True) for track in self.plan.tracks]
        done = []
        for decision in decisions:
            if decision.action in (Action.ADVANCE, Action.ROLLBACK) and not self.dry_run:
                assert decision.track is not None and decision.target is not None
                track = self.plan.track(decision.track)
                moved = self.store.apply(track, track.states[track.index(decision.target)])
                if moved:
                    self._failures.pop(track.name, None)
                    done.append(replace(decision, applied=True))
                else:
                    done.append(decision.hold("kill_switch", _KILLED_BEFORE_MOVE))
            else:
                done.append(replace(decision, dry_run=self.dry_run))
        return tuple(done)

    def rollback(self, track_name: str | None = None, *, kill_switch: bool = False) -> Decision:
        """Move one track back a state, or pull the kill switch (`kill_switch`, no track given,
        the first state, or an unknown state)."""
        now = self.clock()
        view = self.store.read()
        target, current = KILL_SWITCH, None
        if track_name is not None and not kill_switch:
            track = self.plan.track(track_name)
            current = view.tracks[track.name].state
            if current is not None and track.index(current) > 0:
                target = track.names[track.index(current) - 1]
        decision = self.manual_rollback(now, current, target, track_name)
        if self.dry_run:
            return decision
        if target == KILL_SWITCH:
            self.store.kill()
            return replace(decision, applied=True)
        assert track_name is not None
        track = self.plan.track(track_name)
        moved = self.store.apply(track, track.states[track.index(target)])
        return replace(decision, applied=moved)

    def _decide(self, track: TrackPlan, view: LayersView, *, count: bool) -> Decision:
        now = self.clock()
        seen = view.tracks.get(track.name, TrackView(state=None, changed_at=None))
        base = Decision(
            at=now, stage=seen.state, action=Action.HOLD, code="", reason="", track=track.name
        )
        if view.kill_switch:
            return base.hold("kill_switch", _KILL_SWITCH_ON)
        if seen.state is None:
            unknown = f"the {track.layer} flags match no state of track {track.name} "
            return base.hold("unknown_stage", unknown + "(changed by hand?)")
        if seen.changed_at is None:
            return base.hold("unknown_start", "Unleash has no record of when it began")
        decision = self.judge(
            replace(base, elapsed=max(now - seen.changed_at, 0.0)),
            track.states,
            track.index(seen.state),
            since=seen.changed_at,
            failures=self._failures.setdefault(track.name, Failures()),
            count=count,
            noun="state",
        )
        if decision.action is Action.ADVANCE:
            return self._when_required(decision, view.tracks)
        return decision

    def _when_required(self, advance: Decision, tracks: Mapping[str, TrackView]) -> Decision:
        """`advance`, or a hold while the state it goes to waits for another track."""
        assert advance.track is not None and advance.target is not None
        track = self.plan.track(advance.track)
        requires = track.states[track.index(advance.target)].requires
        if requires is None:
            return advance
        other, wanted = requires
        there = tracks.get(other, TrackView(state=None, changed_at=None)).state
        order = self.plan.track(other)
        if there is not None and order.index(there) >= order.index(wanted):
            return advance
        waiting = f"gates pass; {advance.target} waits for track {other} to reach {wanted}"
        return advance.hold(
            "waiting_for_track", f"{waiting} (it is at {there or 'no known state'})"
        )
