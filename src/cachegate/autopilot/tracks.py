"""Per-layer tracks: each layer advances, holds and rolls back on its own gates.

With a track plan (`[[tracks]]` in the plan) the controller decides once per track per step:
the track's state and start come from Unleash (`layers.UnleashLayers`), its gates are judged as
a stage's are, and a move touches only that track's flags. One track rolling back never moves
the other. A state with `requires = "l2:serve"` is entered only once that track is there (read
before this step's moves, so two tracks never advance on each other's strength in one step).
The kill switch always wins: while it is on, every track holds with code `kill_switch`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from cachegate.autopilot.controller import KILL_SWITCH, Action, Decision, not_yet
from cachegate.autopilot.gates import (
    GateResult,
    MetricsReader,
    MetricsUnavailable,
    Verdict,
    evaluate,
)
from cachegate.autopilot.layers import LayersView, TrackView
from cachegate.autopilot.plan import OnFail, Plan, PlanError, TrackPlan, TrackState

__all__ = ["LayerStore", "TrackController"]


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
class TrackController:
    """Evaluates each track's current state and advances, holds or rolls it back."""

    plan: Plan
    reader: MetricsReader
    store: LayerStore
    clock: Callable[[], float] = time.time
    dry_run: bool = False
    _failures: dict[str, dict[str, int]] = field(default_factory=dict)
    _failures_state: dict[str, str | None] = field(default_factory=dict)

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
                    done.append(
                        replace(
                            decision,
                            action=Action.HOLD,
                            code="kill_switch",
                            reason="the kill switch went on before the move: nothing moved",
                            target=None,
                        )
                    )
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
        decision = Decision(
            at=now,
            stage=current,
            action=Action.ROLLBACK,
            code="manual",
            reason=f"rollback asked for: to {target}",
            target=target,
            dry_run=self.dry_run,
            track=track_name,
        )
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
            return replace(
                base,
                code="kill_switch",
                reason="the kill switch is on: every track holds until a person turns it off",
            )
        if seen.state is None:
            return replace(
                base,
                code="unknown_stage",
                reason=f"the {track.layer} flags match no state of track {track.name} "
                "(changed by hand?)",
            )
        if seen.changed_at is None:
            return replace(
                base, code="unknown_start", reason="Unleash has no record of when it began"
            )
        elapsed = max(now - seen.changed_at, 0.0)
        base = replace(base, elapsed=elapsed)
        if count and self._failures_state.get(track.name) != seen.state:
            self._failures[track.name] = {}
            self._failures_state[track.name] = seen.state
        observed = elapsed - self.plan.settle
        if observed < 1.0:
            return replace(
                base, code="settling", reason=f"state began {elapsed:.0f}s ago; clients settle"
            )
        current = track.states[track.index(seen.state)]
        try:
            results = tuple(
                evaluate(
                    gate,
                    self.reader,
                    window=min(gate.window, observed),
                    selector=self.plan.selector,
                    baseline_at=seen.changed_at,
                )
                for gate in current.gates
            )
        except MetricsUnavailable as exc:
            return replace(base, code="metrics_unavailable", reason=f"no metrics: {exc}")
        return self._judge(base, track, current, results, view.tracks, count=count)

    def _judge(
        self,
        base: Decision,
        track: TrackPlan,
        current: TrackState,
        results: tuple[GateResult, ...],
        others: Mapping[str, TrackView],
        *,
        count: bool,
    ) -> Decision:
        base = replace(base, gates=results)
        failures = dict(self._failures.get(track.name, {}))
        for result in results:
            failed = result.verdict is Verdict.FAIL
            failures[result.gate] = failures.get(result.gate, 0) + 1 if failed else 0
        if count:
            self._failures[track.name] = failures
        gates = {gate.name: gate for gate in current.gates}
        position = track.index(current.name)
        for result in results:
            gate = gates[result.gate]
            if result.verdict is not Verdict.FAIL or failures[result.gate] < gate.failure_limit:
                continue
            if result.on_fail is OnFail.ROLLBACK:
                if position == 0:
                    return replace(
                        base,
                        code="gate_failed",
                        reason=f"{result.gate}: {result.reason} (first state: nothing to undo)",
                    )
                target = track.names[position - 1]
                if gate.rollback_to is not None and track.index(gate.rollback_to) < position:
                    target = gate.rollback_to
                return replace(
                    base,
                    action=Action.ROLLBACK,
                    target=target,
                    code="gate_failed",
                    reason=f"{result.gate}: {result.reason}",
                )
        limits = {name: gate.failure_limit for name, gate in gates.items()}
        waiting = not_yet(base, results, failures, limits, current.min_observation)
        if waiting is not None:
            return waiting
        if position == len(track.states) - 1:
            return replace(
                base, action=Action.COMPLETE, code="complete", reason="last state, gates pass"
            )
        following = track.states[position + 1]
        if following.requires is not None:
            other, wanted = following.requires
            there = others.get(other, TrackView(state=None, changed_at=None)).state
            reached = there is not None and self.plan.track(other).index(there) >= (
                self.plan.track(other).index(wanted)
            )
            if not reached:
                return replace(
                    base,
                    code="waiting_for_track",
                    reason=f"gates pass; {following.name} waits for track {other} to reach "
                    f"{wanted} (it is at {there or 'no known state'})",
                )
        return replace(
            base,
            action=Action.ADVANCE,
            target=following.name,
            code="gates_passed",
            reason=f"every gate passes after {base.elapsed:.0f}s: on to {following.name}",
        )
