"""The autopilot's decisions become metrics and a readable, JSON-able record."""

from __future__ import annotations

import json
import math

from prometheus_client import CollectorRegistry

from cachegate.autopilot.controller import Action, Decision
from cachegate.autopilot.gates import GateResult, Verdict
from cachegate.autopilot.plan import OnFail
from cachegate.autopilot.report import render_decision, render_json
from cachegate.autopilot.telemetry import AutopilotMetrics
from cachegate.flags import STAGES

GATES = (
    GateResult(
        "l1-agreement", "agreement", Verdict.PASS, "ok", OnFail.ROLLBACK, 0.0, 0.004, 0.01, 900
    ),
    GateResult("store-failures", "proportion", Verdict.HOLD, "no data", OnFail.ROLLBACK),
    GateResult("error-rate", "comparison", Verdict.FAIL, "worse", OnFail.ROLLBACK, math.nan),
)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_decisions_become_metrics() -> None:
    registry = CollectorRegistry()
    metrics = AutopilotMetrics(STAGES, registry=registry)
    assert value(registry, "cachegate_autopilot_stage") == -1
    assert (
        value(
            registry, "cachegate_autopilot_decisions_total", action="rollback", reason="gate_failed"
        )
        == 0
    )

    hold = Decision(
        at=1000.0,
        stage="l1-10",
        action=Action.HOLD,
        code="gate_holding",
        reason="x",
        elapsed=120.0,
        gates=GATES,
    )
    metrics.record(hold)
    assert value(registry, "cachegate_autopilot_stage") == 3
    assert value(registry, "cachegate_autopilot_holding_seconds") == 120.0
    assert value(registry, "cachegate_autopilot_gate_verdict", gate="l1-agreement") == 1
    assert value(registry, "cachegate_autopilot_gate_verdict", gate="store-failures") == 0
    assert value(registry, "cachegate_autopilot_gate_verdict", gate="error-rate") == -1
    assert value(registry, "cachegate_autopilot_gate_bound", gate="l1-agreement") == 0.004
    assert math.isnan(value(registry, "cachegate_autopilot_gate_value", gate="error-rate") or 0)

    rollback = Decision(
        at=1010.0,
        stage="l1-10",
        action=Action.ROLLBACK,
        code="gate_failed",
        reason="y",
        target="l2",
        elapsed=130.0,
        applied=True,
    )
    metrics.record(rollback)
    assert value(registry, "cachegate_autopilot_stage") == 2
    assert value(registry, "cachegate_autopilot_holding_seconds") == 0
    assert (
        value(
            registry, "cachegate_autopilot_decisions_total", action="rollback", reason="gate_failed"
        )
        == 1
    )
    assert value(registry, "cachegate_autopilot_last_decision_timestamp_seconds") == 1010.0

    killed = Decision(at=1020.0, stage="l2", action=Action.HOLD, code="kill_switch", reason="z")
    metrics.record(killed)
    assert value(registry, "cachegate_autopilot_stage") == -1


def test_report_table_and_json() -> None:
    decision = Decision(
        at=0.0,
        stage="l1-10",
        action=Action.ROLLBACK,
        code="gate_failed",
        reason="l1-agreement: agreement below bound",
        target="l2",
        gates=GATES,
        dry_run=True,
    )
    text = render_decision(decision)
    assert "ROLLBACK -> l2 (dry run: not applied)" in text
    assert "l1-agreement: agreement below bound" in text
    lines = text.splitlines()
    assert lines[2].split()[:3] == ["GATE", "VERDICT", "FIGURE"]
    assert any(line.split()[:2] == ["error-rate", "fail"] for line in lines)
    record = json.loads(render_json([decision]))
    assert record["action"] == "rollback" and record["target"] == "l2"
    assert record["gates"][2]["figure"] is None  # NaN is null in JSON
    assert record["gates"][0]["bound"] == 0.004


def test_track_decisions_carry_their_track() -> None:
    registry = CollectorRegistry()
    tracks = {"l2": ["off", "shadow", "serve"], "l1": ["off", "shadow", "l1-10"]}
    metrics = AutopilotMetrics((), tracks=tracks, registry=registry)
    assert value(registry, "cachegate_autopilot_track_state", track="l1") == -1
    name = "cachegate_autopilot_track_decisions_total"
    assert value(registry, name, track="l1", action="rollback", reason="gate_failed") == 0
    rollback = Decision(
        at=1.0,
        stage="l1-10",
        action=Action.ROLLBACK,
        code="gate_failed",
        reason="l1-agreement: agreement below bound",
        target="shadow",
        gates=GATES,
        applied=True,
        track="l1",
    )
    holding = Decision(
        at=1.0,
        stage="serve",
        action=Action.HOLD,
        code="waiting_for_track",
        reason="",
        elapsed=120.0,
        track="l2",
    )
    metrics.record(rollback)
    metrics.record(holding)
    assert value(registry, name, track="l1", action="rollback", reason="gate_failed") == 1
    assert value(registry, name, track="l2", action="hold", reason="waiting_for_track") == 1
    assert value(registry, name, track="l2", action="rollback", reason="gate_failed") == 0
    # Also in the counter the rollback alert reads, and the holding gauge its other alert reads.
    total = "cachegate_autopilot_decisions_total"
    assert value(registry, total, action="rollback", reason="gate_failed") == 1
    assert value(registry, "cachegate_autopilot_holding_seconds") == 120.0
    assert value(registry, "cachegate_autopilot_track_state", track="l1") == 1
    assert value(registry, "cachegate_autopilot_track_state", track="l2") == 2
    assert value(registry, "cachegate_autopilot_track_holding_seconds", track="l2") == 120.0
    verdict = "cachegate_autopilot_track_gate_verdict"
    assert value(registry, verdict, track="l1", gate="error-rate") == -1
    assert json.loads(render_json([rollback]))["track"] == "l1"
    assert render_decision(rollback).splitlines()[0].split("  ")[1] == "track l1"
