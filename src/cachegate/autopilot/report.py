"""Decisions for people (a table) and for programs (JSON)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from cachegate.autopilot.decision import Decision
from cachegate.autopilot.gates import GateResult
from cachegate.autopilot.plan import Plan, StagePlan, TrackState

__all__ = ["decision_dict", "render_decision", "render_json", "render_plan"]

_BOLD, _RED, _GREEN, _YELLOW, _RESET = "\033[1m", "\033[31m", "\033[32m", "\033[33m", "\033[0m"
_COLOURS = {"pass": _GREEN, "hold": _YELLOW, "fail": _RED}


def _number(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    if value == 0 or 0.001 <= abs(value) < 1:
        return f"{value:.4f}".rstrip("0").rstrip(".") or "0"
    return f"{value:.4g}"


def _json_number(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) or math.isinf(value) else value


def decision_dict(decision: Decision) -> dict[str, Any]:
    """A JSON-ready record of `decision` with every gate's figures (NaN and none as null)."""
    return {
        "at": datetime.fromtimestamp(decision.at, UTC).isoformat(),
        "stage": decision.stage,
        "track": decision.track,
        "action": decision.action.value,
        "target": decision.target,
        "reason": decision.reason,
        "code": decision.code,
        "elapsed_seconds": _json_number(decision.elapsed),
        "applied": decision.applied,
        "dry_run": decision.dry_run,
        "gates": [_gate_dict(result) for result in decision.gates],
    }


def _gate_dict(result: GateResult) -> dict[str, Any]:
    return {
        "gate": result.gate,
        "kind": result.kind,
        "verdict": result.verdict.value,
        "figure": _json_number(result.figure),
        "bound": _json_number(result.bound),
        "threshold": _json_number(result.threshold),
        "sample": _json_number(result.sample),
        "on_fail": result.on_fail.value,
        "reason": result.reason,
    }


def render_json(decisions: Sequence[Decision]) -> str:
    """One JSON document per decision, one a line."""
    return "".join(json.dumps(decision_dict(d), sort_keys=True) + "\n" for d in decisions)


def render_decision(decision: Decision, *, colour: bool = False) -> str:
    """The decision line and a table of the gates: figure, bound, threshold, verdict, why."""
    when = datetime.fromtimestamp(decision.at, UTC).strftime("%H:%M:%S")
    move = f" -> {decision.target}" if decision.target else ""
    state = "" if decision.applied or not decision.target else " (not applied)"
    if decision.dry_run and decision.target:
        state = " (dry run: not applied)"
    where = f"track {decision.track}  state" if decision.track else "stage"
    head = f"{when}  {where} {decision.stage or '?'}  {decision.action.value.upper()}{move}{state}"
    lines = [f"{_BOLD}{head}{_RESET}" if colour else head, f"  {decision.reason}"]
    if decision.gates:
        rows = [("GATE", "VERDICT", "FIGURE", "BOUND", "THRESHOLD", "SAMPLE", "WHY")]
        rows += [
            (
                r.gate,
                r.verdict.value,
                _number(r.figure),
                _number(r.bound),
                _number(r.threshold),
                _number(r.sample),
                r.reason,
            )
            for r in decision.gates
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        for index, row in enumerate(rows):
            cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
            if colour and index:
                cells[1] = f"{_COLOURS[row[1]]}{cells[1]}{_RESET}"
            lines.append("  " + "  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines) + "\n"


def render_plan(plan: Plan) -> str:
    """The plan's stages (or each track's states) in order with observation times and gates."""
    lines = [f"rollout plan {plan.source}", f"evaluated every {plan.interval:g}s", ""]
    steps: list[StagePlan | TrackState] = list(plan.stages)
    for position, stage in enumerate(plan.stages):
        gates = ", ".join(gate.name for gate in stage.gates) or "none"
        lines.append(
            f"{position}. {stage.name:<12} observe >= {stage.min_observation:g}s  gates: {gates}"
        )
    for track in plan.tracks:
        lines.append(f"track {track.name} (layer {track.layer}: {', '.join(track.flags)})")
        for position, state in enumerate(track.states):
            steps.append(state)
            gates = ", ".join(gate.name for gate in state.gates) or "none"
            after = f"  after {':'.join(state.requires)}" if state.requires else ""
            lines.append(
                f"  {position}. {state.name:<10} flags of {state.flags_from:<12}"
                f" observe >= {state.min_observation:g}s  gates: {gates}{after}"
            )
    lines.append("")
    seen: dict[str, str] = {}
    for step in steps:
        for gate in step.gates:
            limit = next(
                f"{key} {value:g}"
                for key, value in (
                    ("max excess", gate.max_excess),
                    ("max", gate.max),
                    ("min", gate.min),
                    ("max increase", gate.max_increase),
                    ("min sample", float(gate.min_sample)),
                )
                if value is not None
            )
            seen[gate.name] = (
                f"{gate.name:<22} {gate.kind.value:<11} {limit:<18} window {gate.window:g}s"
                f"  min sample {gate.min_sample}"
                f"  fails {gate.failure_limit}x -> {gate.on_fail.value}"
                + (f" to {gate.rollback_to}" if gate.rollback_to else "")
            )
    lines.extend(seen.values())
    return "\n".join(lines) + "\n"
