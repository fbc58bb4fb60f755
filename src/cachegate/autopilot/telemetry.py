"""The autopilot's own metrics: the stage, every decision by action and reason, gate figures.

Exported by `cachegate rollout run --metrics-port`; the rollout dashboard and the
`cachegate-autopilot` alert group read them. Gate names come from the plan (a handful).
"""

from __future__ import annotations

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


class AutopilotMetrics:
    """Gauges and counters of the autopilot, registered once in `registry`."""

    def __init__(
        self,
        stages: Sequence[str],
        *,
        tracks: Mapping[str, Sequence[str]] | None = None,
        namespace: str = "cachegate",
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        ns, reg = namespace, registry
        self._stages = list(stages)
        self._tracks = {name: list(states) for name, states in (tracks or {}).items()}
        self._track_holding: dict[str, float] = {}
        self.track_state = Gauge(
            "autopilot_track_state",
            "Position of a track's current state in its order (0 = first; a track plan); -1: "
            "the kill switch is on or the layer's flags match no state.",
            ["track"],
            namespace=ns,
            registry=reg,
        )
        self.track_decisions = Counter(
            "autopilot_track_decisions",
            "Autopilot decisions of a track plan by track, action and reason (each is also "
            "counted in autopilot_decisions_total).",
            ["track", "action", "reason"],
            namespace=ns,
            registry=reg,
        )
        self.track_gate_verdict = Gauge(
            "autopilot_track_gate_verdict",
            "A gate's last verdict in a track: 1 pass, 0 hold, -1 fail.",
            ["track", "gate"],
            namespace=ns,
            registry=reg,
        )
        self.track_holding = Gauge(
            "autopilot_track_holding_seconds",
            "Seconds since a track's current state began while the autopilot holds it.",
            ["track"],
            namespace=ns,
            registry=reg,
        )
        self.stage = Gauge(
            "autopilot_stage",
            "Position of the current stage in the rollout plan (0 = first); -1: the kill switch "
            "is on or the flags match no stage.",
            namespace=ns,
            registry=reg,
        )
        self.decisions = Counter(
            "autopilot_decisions",
            "Autopilot decisions by action (advance, hold, rollback, complete) and reason.",
            ["action", "reason"],
            namespace=ns,
            registry=reg,
        )
        self.gate_value = Gauge(
            "autopilot_gate_value",
            "The figure a gate measured at its last evaluation (NaN: none).",
            ["gate"],
            namespace=ns,
            registry=reg,
        )
        self.gate_bound = Gauge(
            "autopilot_gate_bound",
            "The bound a gate compared with its threshold (e.g. the mismatch upper bound).",
            ["gate"],
            namespace=ns,
            registry=reg,
        )
        self.gate_threshold = Gauge(
            "autopilot_gate_threshold",
            "The threshold of a gate at its last evaluation.",
            ["gate"],
            namespace=ns,
            registry=reg,
        )
        self.gate_verdict = Gauge(
            "autopilot_gate_verdict",
            "A gate's last verdict: 1 pass, 0 hold, -1 fail.",
            ["gate"],
            namespace=ns,
            registry=reg,
        )
        self.holding = Gauge(
            "autopilot_holding_seconds",
            "Seconds since the current stage began while the autopilot holds it (0 otherwise).",
            namespace=ns,
            registry=reg,
        )
        self.last_decision = Gauge(
            "autopilot_last_decision_timestamp_seconds",
            "Unix time of the autopilot's last decision.",
            namespace=ns,
            registry=reg,
        )
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
        self.decisions.labels(decision.action.value, decision.code or "unknown").inc()
        self.last_decision.set(decision.at)
        if decision.track is not None:
            self._record_track(decision.track, decision)
            return
        stage = decision.target if decision.applied and decision.target else decision.stage
        known = stage in self._stages and decision.code != "kill_switch"
        self.stage.set(self._stages.index(stage) if known and stage is not None else -1)
        holding = decision.action is Action.HOLD and decision.elapsed is not None
        self.holding.set(decision.elapsed if holding and decision.elapsed is not None else 0.0)
        nan = float("nan")
        for result in decision.gates:
            self.gate_value.labels(result.gate).set(nan if result.figure is None else result.figure)
            self.gate_bound.labels(result.gate).set(nan if result.bound is None else result.bound)
            threshold = nan if result.threshold is None else result.threshold
            self.gate_threshold.labels(result.gate).set(threshold)
            self.gate_verdict.labels(result.gate).set(_VERDICTS[result.verdict])

    def _record_track(self, track: str, decision: Decision) -> None:
        action, code = decision.action.value, decision.code or "unknown"
        self.track_decisions.labels(track, action, code).inc()
        states = self._tracks.get(track, [])
        state = decision.target if decision.applied and decision.target else decision.stage
        known = state in states and decision.code != "kill_switch"
        self.track_state.labels(track).set(states.index(state) if known and state else -1)
        holding = decision.action is Action.HOLD and decision.elapsed is not None
        held = decision.elapsed if holding and decision.elapsed is not None else 0.0
        self.track_holding.labels(track).set(held)
        self._track_holding[track] = held
        self.holding.set(max(self._track_holding.values()))
        for result in decision.gates:
            self.track_gate_verdict.labels(track, result.gate).set(_VERDICTS[result.verdict])


_default: AutopilotMetrics | None = None


def default_autopilot_metrics(
    stages: Sequence[str], tracks: Mapping[str, Sequence[str]] | None = None
) -> AutopilotMetrics:
    """The process's autopilot metrics in the default registry, created once."""
    global _default
    if _default is None:
        _default = AutopilotMetrics(stages, tracks=tracks)
    return _default
