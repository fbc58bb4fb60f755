"""A plan of whole stages: `[[stages]]` in rollout order, each a stage file with its gates."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cachegate.autopilot.plan.gates import GateSpec, check_rollback_to, gate_list
from cachegate.autopilot.plan.values import Entry, PlanError, entries, no_repeats, stage_file

__all__ = ["StagePlan", "read_stages"]

_STAGE_KEYS = {"name", "min_observation", "gates"}


@dataclass(frozen=True, slots=True)
class StagePlan:
    """A stage: the stage file of the same name, how long to watch it, and its gates."""

    name: str
    min_observation: float
    gates: tuple[GateSpec, ...]


def read_stages(
    raw: Any, gates: Mapping[str, GateSpec], source: str, environ: Mapping[str, str] | None
) -> tuple[StagePlan, ...]:
    """The `[[stages]]` of the plan: at least one, each once, every `rollback_to` one of them."""
    if not isinstance(raw, list) or not raw:
        raise PlanError(f"{source}: the plan needs at least one [[stages]] entry")
    within = f"{source}: "
    stages = tuple(
        _stage(entry, gates, environ)
        for entry in entries(raw, _STAGE_KEYS, within, "stage", name="the name of a stage file")
    )
    names = [stage.name for stage in stages]
    no_repeats(names, "stage", source)
    check_rollback_to(gates.values(), names, within, "stage of the plan")
    return stages


def _stage(
    entry: Entry, gates: Mapping[str, GateSpec], environ: Mapping[str, str] | None
) -> StagePlan:
    stage_file(entry.name, entry.where, environ)
    chosen = gate_list(entry.table, gates, entry.where)
    return StagePlan(name=entry.name, min_observation=entry.observation(), gates=chosen)
