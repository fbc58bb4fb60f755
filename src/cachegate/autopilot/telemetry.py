"""The autopilot's own metrics: the stage, every decision by action and reason, gate figures.

Exported by `cachegate rollout run --metrics-port`; the rollout dashboard and the
`cachegate-autopilot` alert group read them. Gate names come from the plan (a handful).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from cachegate.autopilot.decision import Action, Decision
from cachegate.autopilot.gates import Verdict

__all__ = ["REASON_CODES", "AutopilotMetrics", "default_autopilot_metrics"]

REASON_CODES: dict[Action, tuple[str, ...]] = {
    Action.ADVANCE: ("gates_passed",),
    Action.HOLD: (
        "settling",
        "observing",
        "gate_holding",
        "gate_failing",
        "gate_failed",
        "waiting_for_track",
        "metrics_unavailable",
        "kill_switch",
        "unknown_stage",
        "unknown_start",
    ),
    Action.ROLLBACK: ("gate_failed", "manual"),
    Action.COMPLETE: ("complete",),
}
"""Every (action, reason) pair a decision can carry: the series start at zero."""

_VERDICTS = {Verdict.PASS: 1.0, Verdict.HOLD: 0.0, Verdict.FAIL: -1.0}


_GAUGES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "stage": (
        "autopilot_stage",
        "Position of the current stage in the rollout plan (0 = first); -1: the kill switch "
        "is on or the flags match no stage.",
        (),
    ),
    "gate_value": (
        "autopilot_gate_value",
        "The figure a gate measured at its last evaluation (NaN: none).",
        ("gate",),
    ),
    "gate_bound": (
        "autopilot_gate_bound",
        "The bound a gate compared with its threshold (e.g. the mismatch upper bound).",
        ("gate",),
    ),
    "gate_threshold": (
        "autopilot_gate_threshold",
        "The threshold of a gate at its last evaluation.",
        ("gate",),
    ),
    "gate_verdict": (
        "autopilot_gate_verdict",
        "A gate's last verdict: 1 pass, 0 hold, -1 fail.",
        ("gate",),
    ),
    "holding": (
        "autopilot_holding_seconds",
        "Seconds since the current stage began while the autopilot holds it (0 otherwise).",
        (),
    ),
    "last_decision": (
        "autopilot_last_decision_timestamp_seconds",
        "Unix time of the autopilot's last decision.",
        (),
    ),
    "track_state": (
        "autopilot_track_state",
        "Position of a track's current state in its order (0 = first; a track plan); -1: "
        "the kill switch is on or the layer's flags match no state.",
        ("track",),
    ),
    "track_gate_verdict": (
        "autopilot_track_gate_verdict",
        "A gate's last verdict in a track: 1 pass, 0 hold, -1 fail.",
        ("track", "gate"),
    ),
    "track_holding": (
        "autopilot_track_holding_seconds",
        "Seconds since a track's current state began while the autopilot holds it.",
        ("track",),
    ),
}
"""The gauges by attribute: name (under the namespace), help and labels."""

_COUNTERS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "decisions": (
        "autopilot_decisions",
        "Autopilot decisions by action (advance, hold, rollback, complete) and reason.",
        ("action", "reason"),
    ),
    "track_decisions": (
        "autopilot_track_decisions",
        "Autopilot decisions of a track plan by track, action and reason (each is also "
        "counted in autopilot_decisions_total).",
        ("track", "action", "reason"),
    ),
}
"""The counters by attribute: name (under the namespace, `_total` added), help and labels."""


class AutopilotMetrics:
    """Gauges and counters of the autopilot, registered once in `registry` (see `_GAUGES` and
    `_COUNTERS`)."""

    stage: Gauge
    holding: Gauge
    last_decision: Gauge
    gate_value: Gauge
    gate_bound: Gauge
    gate_threshold: Gauge
    gate_verdict: Gauge
    track_state: Gauge
    track_holding: Gauge
    track_gate_verdict: Gauge
    decisions: Counter
    track_decisions: Counter

    def __init__(
        self,
        stages: Sequence[str],
        *,
        tracks: Mapping[str, Sequence[str]] | None = None,
        namespace: str = "cachegate",
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        self._stages = list(stages)
        self._tracks = {name: list(states) for name, states in (tracks or {}).items()}
        self._track_holding: dict[str, float] = {}
        for attribute, (name, text, labels) in _GAUGES.items():
            gauge = Gauge(name, text, labels, namespace=namespace, registry=registry)
            setattr(self, attribute, gauge)
        for attribute, (name, text, labels) in _COUNTERS.items():
            counter = Counter(name, text, labels, namespace=namespace, registry=registry)
            setattr(self, attribute, counter)
        for action, reasons in REASON_CODES.items():
            for reason in reasons:
                self.decisions.labels(action.value, reason)
                for track in self._tracks:
                    self.track_decisions.labels(track, action.value, reason)
        self.stage.set(-1)
        for track in self._tracks:
            self.track_state.labels(track).set(-1)
            self.track_holding.labels(track).set(0)

    def record(self, decision: Decision) -> None:
        """Count `decision` and publish its figures (a track's under its `track` label)."""
        action, code = decision.action.value, decision.code or "unknown"
        self.decisions.labels(action, code).inc()
        self.last_decision.set(decision.at)
        held = _held(decision)
        if decision.track is not None:
            track = decision.track
            self.track_decisions.labels(track, action, code).inc()
            self.track_state.labels(track).set(_position(self._tracks.get(track, []), decision))
            self.track_holding.labels(track).set(held)
            self._track_holding[track] = held
            self.holding.set(max(self._track_holding.values()))
            for result in decision.gates:
                self.track_gate_verdict.labels(track, result.gate).set(_VERDICTS[result.verdict])
            return
        self.stage.set(_position(self._stages, decision))
        self.holding.set(held)
        for result in decision.gates:
            figures = (result.figure, result.bound, result.threshold, _VERDICTS[result.verdict])
            gate_gauges = (self.gate_value, self.gate_bound, self.gate_threshold, self.gate_verdict)
            for gauge, figure in zip(gate_gauges, figures, strict=True):
                gauge.labels(result.gate).set(math.nan if figure is None else figure)


def _position(order: Sequence[str], decision: Decision) -> int:
    """Where the decision leaves its stage or state in `order`: its position, or -1 under the
    kill switch or when it is none of them."""
    state = decision.target if decision.applied and decision.target else decision.stage
    if state is None or state not in order or decision.code == "kill_switch":
        return -1
    return order.index(state)


def _held(decision: Decision) -> float:
    """Seconds the state has been held by a hold; 0 after any other decision."""
    if decision.action is Action.HOLD and decision.elapsed is not None:
        return decision.elapsed
    return 0.0


_default: AutopilotMetrics | None = None


def default_autopilot_metrics(
    stages: Sequence[str], tracks: Mapping[str, Sequence[str]] | None = None
) -> AutopilotMetrics:
    """The process's autopilot metrics in the default registry, created once."""
    global _default
    if _default is None:
        _default = AutopilotMetrics(stages, tracks=tracks)
    return _default
