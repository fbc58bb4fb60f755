"""The plan document: the controller's settings and either stages or tracks, read and validated."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachegate.autopilot.plan.gates import read_gates
from cachegate.autopilot.plan.stages import StagePlan, read_stages
from cachegate.autopilot.plan.tracks import TrackPlan, read_tracks
from cachegate.autopilot.plan.values import PlanError, no_unknown, parse_duration
from cachegate.flags import flags_dir

__all__ = ["PLAN_FILE", "Plan", "default_plan_path", "load_plan", "parse_plan"]

PLAN_FILE = "rollout-plan.toml"

_TOP = {"version", "selector", "interval", "settle", "stages", "gates", "tracks"}


@dataclass(frozen=True, slots=True)
class Plan:
    """The validated plan: stages in rollout order (or, with `tracks`, one order per layer) and
    the settings of the controller. A track plan has no stages."""

    stages: tuple[StagePlan, ...]
    interval: float
    settle: float
    selector: str
    source: str
    tracks: tuple[TrackPlan, ...] = ()

    def track(self, name: str) -> TrackPlan:
        """The track called `name`; KeyError if the plan has none."""
        for track in self.tracks:
            if track.name == name:
                return track
        raise KeyError(name)

    def stage(self, name: str) -> StagePlan:
        """The stage called `name`; KeyError if the plan has none."""
        return self.stages[self.index(name)]

    def index(self, name: str) -> int:
        """The position of stage `name` in the rollout order; KeyError if absent."""
        for position, stage in enumerate(self.stages):
            if stage.name == name:
                return position
        raise KeyError(name)

    def has_stage(self, name: str) -> bool:
        """Whether the plan has a stage called `name`."""
        return name in self.names

    @property
    def names(self) -> tuple[str, ...]:
        """The stage names in rollout order."""
        return tuple(stage.name for stage in self.stages)


def default_plan_path(environ: Mapping[str, str] | None = None) -> Path:
    """`rollout-plan.toml` in the flags directory (the checkout's `flags/` or the wheel's copy)."""
    return flags_dir(environ) / PLAN_FILE


def load_plan(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Plan:
    """Read and validate the plan at `path` (default: `default_plan_path()`)."""
    path = path if path is not None else default_plan_path(environ)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PlanError(f"cannot read rollout plan {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PlanError(f"{path} is not valid TOML: {exc}") from None
    return parse_plan(data, source=str(path), environ=environ)


def parse_plan(
    data: Mapping[str, Any], *, source: str = "<plan>", environ: Mapping[str, str] | None = None
) -> Plan:
    """Validate a decoded plan document; every stage must have a stage file."""
    no_unknown(data, _TOP, source)
    if data.get("version") != 1:
        raise PlanError(f"{source}: 'version' must be 1, not {data.get('version')!r}")
    selector = data.get("selector", "")
    if not isinstance(selector, str):
        raise PlanError(f"{source}: 'selector' must be a string of label matchers")
    interval = parse_duration(data.get("interval", "30s"), f"{source}: interval")
    if interval <= 0:
        raise PlanError(f"{source}: 'interval' must be longer than 0s")
    settle = parse_duration(data.get("settle", "5s"), f"{source}: settle")
    gates = read_gates(data.get("gates", {}), source)
    stages: tuple[StagePlan, ...] = ()
    tracks: tuple[TrackPlan, ...] = ()
    if "tracks" not in data:
        stages = read_stages(data.get("stages"), gates, source, environ)
    elif "stages" in data:
        raise PlanError(
            f"{source}: a plan has either [[stages]] (one order for every layer) or "
            "[[tracks]] (one order per layer), not both"
        )
    else:
        tracks = read_tracks(data["tracks"], gates, source, environ)
    return Plan(stages, interval, settle, selector, source, tracks)
