"""The rollout plan as code: ordered stages, each with a minimum observation time and its gates.

The plan lives in `flags/rollout-plan.toml` beside the stage files (a stage's flag state is the
stage file of the same name). `load_plan` validates everything at load and raises `PlanError`
naming the file, the place and the fix, so a wrong plan never reaches Unleash.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from cachegate.flags import (
    FLAG_L1_SERVE,
    FLAG_L1_SHADOW,
    FLAG_L1_VERIFY,
    FLAG_L2_SERVE,
    FLAG_L2_SHADOW,
    FLAGS,
    UnknownStageError,
    flags_dir,
    stage_path,
)

__all__ = [
    "PLAN_FILE",
    "GateKind",
    "GateSpec",
    "OnFail",
    "Plan",
    "PlanError",
    "StagePlan",
    "TrackPlan",
    "TrackState",
    "default_plan_path",
    "load_plan",
    "parse_duration",
]

PLAN_FILE = "rollout-plan.toml"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class PlanError(ValueError):
    """The rollout plan is missing or wrong; the message says where and how to fix it."""


class GateKind(StrEnum):
    """How a gate turns Prometheus figures into a verdict (see `gates.py`)."""

    AGREEMENT = "agreement"
    PROPORTION = "proportion"
    THRESHOLD = "threshold"
    COMPARISON = "comparison"
    SAMPLE = "sample"


class OnFail(StrEnum):
    """What a failing gate does once it reached its failure limit."""

    ROLLBACK = "rollback"
    HOLD = "hold"


@dataclass(frozen=True, slots=True)
class GateSpec:
    """One gate: its queries, bounds and the handling of failure. Unused fields stay None."""

    name: str
    kind: GateKind
    window: float
    failure_limit: int = 1
    on_fail: OnFail = OnFail.HOLD
    min_sample: int = 0
    confidence: float = 0.95
    layer: str | None = None
    max_excess: float | None = None
    events: str | None = None
    total: str | None = None
    value: str | None = None
    count: str | None = None
    min: float | None = None
    max: float | None = None
    max_increase: float | None = None
    slack: float = 0.0
    rollback_to: str | None = None
    """Where a rollback on this gate goes when that stage is earlier than the current one: e.g.
    an L1 gate back to the last stage where L1 does not serve, leaving L2 serving. Elsewhere,
    and when None: the stage before."""


@dataclass(frozen=True, slots=True)
class StagePlan:
    """A stage: the stage file of the same name, how long to watch it, and its gates."""

    name: str
    min_observation: float
    gates: tuple[GateSpec, ...]


LAYER_FLAGS: dict[str, tuple[str, ...]] = {
    "l1": (FLAG_L1_SHADOW, FLAG_L1_SERVE, FLAG_L1_VERIFY),
    "l2": (FLAG_L2_SHADOW, FLAG_L2_SERVE),
}
"""The flags a track of each layer owns (the kill switch belongs to no track)."""

_GATE_LAYERS = {"query_result": "l1", "embedding": "l2"}


@dataclass(frozen=True, slots=True)
class TrackState:
    """One state of a track: its layer's flags as in stage file `flags_from`, how long to watch
    it, its gates, and (`requires`) the state another track must have reached before this one
    is entered, e.g. L1 serves only once L2 has passed its shadow gates."""

    name: str
    flags_from: str
    min_observation: float
    gates: tuple[GateSpec, ...]
    requires: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class TrackPlan:
    """A layer that progresses on its own: its states in order, touching only its flags."""

    name: str
    layer: str
    flags: tuple[str, ...]
    states: tuple[TrackState, ...]

    @property
    def names(self) -> tuple[str, ...]:
        """The state names in rollout order."""
        return tuple(state.name for state in self.states)

    def index(self, name: str) -> int:
        """The position of state `name`; KeyError if absent."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(name) from None


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
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)

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


def parse_duration(text: object, where: str) -> float:
    """Seconds of a duration like `90s`, `15m`, `2h`; PlanError naming `where` otherwise."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    elif isinstance(text, str) and (match := _DURATION.match(text)):
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise PlanError(f"{where}: {text!r} is not a duration (write e.g. '90s', '15m', '2h')")
    if not math.isfinite(seconds) or seconds < 0:
        raise PlanError(f"{where}: a duration must be finite and >= 0, not {text!r}")
    return seconds


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


_TOP = {"version", "selector", "interval", "settle", "stages", "gates", "tracks"}
_STAGE_KEYS = {"name", "min_observation", "gates"}
_TRACK_KEYS = {"name", "layer", "flags", "states"}
_STATE_KEYS = {"name", "flags_from", "min_observation", "gates", "requires"}
_COMMON = {"kind", "window", "failure_limit", "on_fail", "min_sample", "rollback_to"}
_KIND_KEYS: dict[GateKind, tuple[set[str], set[str]]] = {
    # kind: (required, optional) besides the common keys
    GateKind.AGREEMENT: ({"layer", "max_excess"}, {"confidence"}),
    GateKind.PROPORTION: ({"events", "total"}, {"min", "max", "confidence"}),
    GateKind.THRESHOLD: ({"value"}, {"min", "max"}),
    GateKind.COMPARISON: ({"value", "count", "max_increase"}, {"slack"}),
    GateKind.SAMPLE: ({"count", "min_sample"}, set()),
}


def parse_plan(
    data: Mapping[str, Any], *, source: str = "<plan>", environ: Mapping[str, str] | None = None
) -> Plan:
    """Validate a decoded plan document; every stage must have a stage file."""
    _no_unknown(data, _TOP, source)
    if data.get("version") != 1:
        raise PlanError(f"{source}: 'version' must be 1, not {data.get('version')!r}")
    selector = data.get("selector", "")
    if not isinstance(selector, str):
        raise PlanError(f"{source}: 'selector' must be a string of label matchers")
    interval = parse_duration(data.get("interval", "30s"), f"{source}: interval")
    if interval <= 0:
        raise PlanError(f"{source}: 'interval' must be longer than 0s")
    settle = parse_duration(data.get("settle", "5s"), f"{source}: settle")
    raw_gates = data.get("gates", {})
    if not isinstance(raw_gates, dict):
        raise PlanError(f"{source}: [gates] must be a table of gate tables")
    gates = {name: _gate(name, spec, source) for name, spec in raw_gates.items()}
    if "tracks" in data:
        if "stages" in data:
            raise PlanError(
                f"{source}: a plan has either [[stages]] (one order for every layer) or "
                "[[tracks]] (one order per layer), not both"
            )
        tracks = _tracks(data["tracks"], gates, source, environ)
        return Plan(
            stages=(),
            interval=interval,
            settle=settle,
            selector=selector,
            source=source,
            tracks=tracks,
        )
    raw_stages = data.get("stages")
    if not isinstance(raw_stages, list) or not raw_stages:
        raise PlanError(f"{source}: the plan needs at least one [[stages]] entry")
    stages = tuple(_stage(i, raw, gates, source, environ) for i, raw in enumerate(raw_stages))
    names = [stage.name for stage in stages]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise PlanError(f"{source}: stage {', '.join(duplicates)} appears more than once")
    for gate in gates.values():
        if gate.rollback_to is not None and gate.rollback_to not in names:
            raise PlanError(
                f"{source}: [gates.{gate.name}] rollback_to {gate.rollback_to!r} is no stage "
                f"of the plan ({', '.join(names)})"
            )
    return Plan(stages=stages, interval=interval, settle=settle, selector=selector, source=source)


def _tracks(
    raw: Any, gates: Mapping[str, GateSpec], source: str, environ: Mapping[str, str] | None
) -> tuple[TrackPlan, ...]:
    if not isinstance(raw, list) or not raw:
        raise PlanError(f"{source}: 'tracks' must be a list of [[tracks]] tables")
    tracks = tuple(_track(i, entry, gates, source, environ) for i, entry in enumerate(raw))
    seen: dict[str, str] = {}
    for track in tracks:
        if track.name in seen.values():
            raise PlanError(f"{source}: track {track.name!r} appears more than once")
        if track.layer in seen:
            raise PlanError(
                f"{source}: layer {track.layer} is in two tracks ({seen[track.layer]!r} and "
                f"{track.name!r}); a layer's flags can follow one order only"
            )
        seen[track.layer] = track.name
    names = {track.name: track for track in tracks}
    for track in tracks:
        for state in track.states:
            if state.requires is None:
                continue
            other, wanted = state.requires
            where = f"{source}: track {track.name!r} state {state.name!r}: requires"
            if other == track.name or other not in names:
                known = ", ".join(n for n in names if n != track.name) or "none"
                raise PlanError(f"{where}: {other!r} is no other track (others: {known})")
            if wanted not in names[other].names:
                raise PlanError(
                    f"{where}: track {other!r} has no state {wanted!r} "
                    f"({', '.join(names[other].names)})"
                )
    return tracks


def _track(
    index: int,
    raw: Any,
    gates: Mapping[str, GateSpec],
    source: str,
    environ: Mapping[str, str] | None,
) -> TrackPlan:
    where = f"{source}: tracks[{index}]"
    if not isinstance(raw, dict):
        raise PlanError(f"{where} must be a table")
    _no_unknown(raw, _TRACK_KEYS, where)
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise PlanError(f"{where}: 'name' must be a non-empty string")
    where = f"{source}: track {name!r}"
    layer = raw.get("layer")
    if layer not in LAYER_FLAGS:
        raise PlanError(f"{where}: 'layer' must be 'l1' or 'l2', not {layer!r}")
    flags = raw.get("flags", list(LAYER_FLAGS[layer]))
    if not isinstance(flags, list) or not flags or not all(isinstance(f, str) for f in flags):
        raise PlanError(f"{where}: 'flags' must be a list of flag names")
    for flag in flags:
        if flag not in FLAGS:
            raise PlanError(f"{where}: unknown flag {flag!r} (known: {', '.join(FLAGS)})")
        if flag not in LAYER_FLAGS[layer]:
            raise PlanError(
                f"{where}: flag {flag!r} is not of layer {layer} "
                f"({', '.join(LAYER_FLAGS[layer])}); the kill switch belongs to no track"
            )
    raw_states = raw.get("states")
    if not isinstance(raw_states, list) or len(raw_states) < 2:
        raise PlanError(f"{where}: a track needs at least two [[tracks.states]]")
    states = tuple(
        _track_state(i, entry, layer, gates, where, environ) for i, entry in enumerate(raw_states)
    )
    state_names = [state.name for state in states]
    duplicates = sorted({n for n in state_names if state_names.count(n) > 1})
    if duplicates:
        raise PlanError(f"{where}: state {', '.join(duplicates)} appears more than once")
    flag_sets: dict[str, str] = {}
    for state in states:
        key = _layer_flags_key(state.flags_from, tuple(flags), environ)
        if key in flag_sets:
            raise PlanError(
                f"{where}: states {flag_sets[key]!r} and {state.name!r} set the same flags "
                f"(from stages of the same {layer} flags); Unleash could not tell them apart"
            )
        flag_sets[key] = state.name
        for gate in state.gates:
            if gate.rollback_to is not None and gate.rollback_to not in state_names:
                raise PlanError(
                    f"{where} state {state.name!r}: [gates.{gate.name}] rollback_to "
                    f"{gate.rollback_to!r} is no state of this track ({', '.join(state_names)})"
                )
    return TrackPlan(name=name, layer=layer, flags=tuple(flags), states=states)


def _track_state(
    index: int,
    raw: Any,
    layer: str,
    gates: Mapping[str, GateSpec],
    track_where: str,
    environ: Mapping[str, str] | None,
) -> TrackState:
    where = f"{track_where} states[{index}]"
    if not isinstance(raw, dict):
        raise PlanError(f"{where} must be a table")
    _no_unknown(raw, _STATE_KEYS, where)
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise PlanError(f"{where}: 'name' must be a non-empty string")
    where = f"{track_where} state {name!r}"
    flags_from = raw.get("flags_from")
    if not isinstance(flags_from, str) or not flags_from:
        raise PlanError(
            f"{where}: 'flags_from' must name the stage file whose {layer} flags to use"
        )
    try:
        stage_path(flags_from, environ)
    except UnknownStageError as exc:
        raise PlanError(f"{where}: flags_from: {exc}") from None
    names = raw.get("gates", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise PlanError(f"{where}: 'gates' must be a list of gate names")
    missing = [n for n in names if n not in gates]
    if missing:
        raise PlanError(
            f"{where}: no [gates.{missing[0]}] defined (defined: {', '.join(sorted(gates))})"
        )
    for gate_name in names:
        gate = gates[gate_name]
        if gate.layer is not None and _GATE_LAYERS[gate.layer] != layer:
            raise PlanError(
                f"{where}: [gates.{gate_name}] judges layer {gate.layer} "
                f"({_GATE_LAYERS[gate.layer]}), not this track's layer {layer}"
            )
    requires = raw.get("requires")
    required: tuple[str, str] | None = None
    if requires is not None:
        if (
            not isinstance(requires, str)
            or requires.count(":") != 1
            or not all(requires.split(":"))
        ):
            raise PlanError(f"{where}: 'requires' must be 'track:state', e.g. 'l2:serve'")
        track, state = requires.split(":")
        required = (track, state)
    observation = parse_duration(raw.get("min_observation", "0s"), f"{where}: min_observation")
    return TrackState(
        name=name,
        flags_from=flags_from,
        min_observation=observation,
        gates=tuple(gates[n] for n in names),
        requires=required,
    )


def _layer_flags_key(stage: str, flags: tuple[str, ...], environ: Mapping[str, str] | None) -> str:
    """What the stage file sets for `flags` (on/off and strategies), comparable by equality."""
    try:
        document = json.loads(stage_path(stage, environ).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PlanError(f"stage file {stage!r} cannot be read: {exc}") from None
    features = {f.get("name"): f for f in document.get("features", []) if isinstance(f, dict)}
    absent = [flag for flag in flags if flag not in features]
    if absent:
        raise PlanError(f"stage file {stage!r} does not define {', '.join(absent)}")
    return json.dumps(
        [
            [
                bool(features[flag].get("enabled")),
                [
                    [s.get("name"), {k: str(v) for k, v in (s.get("parameters") or {}).items()}]
                    for s in features[flag].get("strategies") or []
                ],
            ]
            for flag in flags
        ],
        sort_keys=True,
    )


def _no_unknown(table: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise PlanError(
            f"{where}: unknown key {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(sorted(known))})"
        )


def _stage(
    index: int,
    raw: Any,
    gates: Mapping[str, GateSpec],
    source: str,
    environ: Mapping[str, str] | None,
) -> StagePlan:
    where = f"{source}: stages[{index}]"
    if not isinstance(raw, dict):
        raise PlanError(f"{where} must be a table")
    _no_unknown(raw, _STAGE_KEYS, where)
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise PlanError(f"{where}: 'name' must be the name of a stage file")
    where = f"{source}: stage {name!r}"
    try:
        stage_path(name, environ)
    except UnknownStageError as exc:
        raise PlanError(f"{where}: {exc}") from None
    names = raw.get("gates", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise PlanError(f"{where}: 'gates' must be a list of gate names")
    missing = [n for n in names if n not in gates]
    if missing:
        raise PlanError(
            f"{where}: no [gates.{missing[0]}] defined (defined: {', '.join(sorted(gates))})"
        )
    observation = parse_duration(raw.get("min_observation", "0s"), f"{where}: min_observation")
    return StagePlan(name=name, min_observation=observation, gates=tuple(gates[n] for n in names))


def _gate(name: str, raw: Any, source: str) -> GateSpec:
    where = f"{source}: [gates.{name}]"
    if not isinstance(raw, dict):
        raise PlanError(f"{where} must be a table")
    try:
        kind = GateKind(str(raw.get("kind")))
    except ValueError:
        kinds = ", ".join(k.value for k in GateKind)
        raise PlanError(
            f"{where}: 'kind' must be one of {kinds}, not {raw.get('kind')!r}"
        ) from None
    required, optional = _KIND_KEYS[kind]
    _no_unknown(raw, _COMMON | required | optional, where)
    absent = sorted(required - set(raw))
    if absent:
        raise PlanError(f"{where}: a {kind.value} gate needs {', '.join(absent)}")
    if "window" not in raw:
        raise PlanError(f"{where}: every gate needs a 'window' (its analysis interval)")
    window = parse_duration(raw["window"], f"{where}: window")
    if window <= 0:
        raise PlanError(f"{where}: 'window' must be longer than 0s")
    try:
        on_fail = OnFail(raw.get("on_fail", "hold"))
    except ValueError:
        raise PlanError(f"{where}: 'on_fail' must be 'rollback' or 'hold'") from None
    failure_limit = _integer(raw.get("failure_limit", 1), f"{where}: failure_limit", minimum=1)
    min_sample = _integer(raw.get("min_sample", 0), f"{where}: min_sample", minimum=0)
    numbers = {
        key: _number(raw[key], f"{where}: {key}")
        for key in ("max_excess", "min", "max", "max_increase", "slack", "confidence")
        if key in raw
    }
    confidence = numbers.get("confidence", 0.95)
    if not 0.5 <= confidence < 1.0:
        raise PlanError(f"{where}: 'confidence' must be in [0.5, 1), e.g. 0.95")
    if kind in (GateKind.PROPORTION, GateKind.THRESHOLD) and ("min" in raw) == ("max" in raw):
        raise PlanError(f"{where}: give exactly one of 'min' or 'max'")
    for key in ("max_excess", "min", "max"):
        rate_kind = kind in (GateKind.AGREEMENT, GateKind.PROPORTION)
        if rate_kind and key in numbers and not 0.0 <= numbers[key] <= 1.0:
            raise PlanError(f"{where}: '{key}' is a rate and must be between 0 and 1")
    queries = {
        key: _query(raw[key], f"{where}: {key}")
        for key in ("events", "total", "value", "count")
        if key in raw
    }
    layer = raw.get("layer")
    if layer is not None and layer not in ("query_result", "embedding"):
        raise PlanError(f"{where}: 'layer' must be 'query_result' (L1) or 'embedding' (L2)")
    if kind is GateKind.AGREEMENT and min_sample < 1:
        raise PlanError(f"{where}: an agreement gate needs 'min_sample' >= 1")
    return GateSpec(
        name=name,
        kind=kind,
        window=window,
        failure_limit=failure_limit,
        on_fail=on_fail,
        rollback_to=_rollback_to(raw.get("rollback_to"), where),
        min_sample=min_sample,
        confidence=confidence,
        layer=layer,
        max_excess=numbers.get("max_excess"),
        events=queries.get("events"),
        total=queries.get("total"),
        value=queries.get("value"),
        count=queries.get("count"),
        min=numbers.get("min"),
        max=numbers.get("max"),
        max_increase=numbers.get("max_increase"),
        slack=numbers.get("slack", 0.0),
    )


def _rollback_to(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise PlanError(f"{where}: 'rollback_to' must be the name of an earlier stage")
    return value


def _integer(value: Any, where: str, *, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise PlanError(f"{where}: must be a whole number >= {minimum}, not {value!r}")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PlanError(f"{where}: must be a finite number, not {value!r}")
    if value < 0:
        raise PlanError(f"{where}: must be >= 0, not {value!r}")
    return float(value)


def _query(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PlanError(f"{where}: must be a PromQL expression")
    if "$window" not in value:
        raise PlanError(f"{where}: the query must use $window (the analysis window)")
    return value
