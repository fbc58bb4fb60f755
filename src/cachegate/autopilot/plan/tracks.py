"""A plan of tracks: `[[tracks]]`, one per layer, each an order of states over its layer's flags.

A state takes its layer's flags from a stage file (`flags_from`) and may wait for another
track (`requires`). Two states of a track must set different flags, or Unleash could not tell
which one it holds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cachegate.autopilot.plan.gates import GateSpec, check_rollback_to, gate_list
from cachegate.autopilot.plan.values import Entry, PlanError, entries, no_repeats, stage_file
from cachegate.flags import FLAGS, LAYER_FLAGS, stage_path

__all__ = ["TrackPlan", "TrackState", "read_tracks"]

_TRACK_KEYS = {"name", "layer", "flags", "states"}
_STATE_KEYS = {"name", "flags_from", "min_observation", "gates", "requires"}
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


def read_tracks(
    raw: Any, gates: Mapping[str, GateSpec], source: str, environ: Mapping[str, str] | None
) -> tuple[TrackPlan, ...]:
    """The `[[tracks]]` of the plan: one per layer, each `requires` a state of another one."""
    if not isinstance(raw, list) or not raw:
        raise PlanError(f"{source}: 'tracks' must be a list of [[tracks]] tables")
    found = entries(raw, _TRACK_KEYS, f"{source}: ", "track")
    tracks = tuple(_track(entry, gates, environ) for entry in found)
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
    entry: Entry, gates: Mapping[str, GateSpec], environ: Mapping[str, str] | None
) -> TrackPlan:
    where, table = entry.where, entry.table
    layer = table.get("layer")
    if layer not in LAYER_FLAGS:
        raise PlanError(f"{where}: 'layer' must be 'l1' or 'l2', not {layer!r}")
    owned = LAYER_FLAGS[layer].names
    flags = table.get("flags", list(owned))
    if not isinstance(flags, list) or not flags or not all(isinstance(f, str) for f in flags):
        raise PlanError(f"{where}: 'flags' must be a list of flag names")
    for flag in flags:
        if flag not in FLAGS:
            raise PlanError(f"{where}: unknown flag {flag!r} (known: {', '.join(FLAGS)})")
        if flag not in owned:
            raise PlanError(
                f"{where}: flag {flag!r} is not of layer {layer} "
                f"({', '.join(owned)}); the kill switch belongs to no track"
            )
    raw_states = table.get("states")
    if not isinstance(raw_states, list) or len(raw_states) < 2:
        raise PlanError(f"{where}: a track needs at least two [[tracks.states]]")
    found = entries(raw_states, _STATE_KEYS, f"{where} ", "state")
    states = tuple(_track_state(state, layer, gates, environ) for state in found)
    state_names = [state.name for state in states]
    no_repeats(state_names, "state", where)
    flag_sets: dict[str, str] = {}
    for state in states:
        key = _layer_flags_key(state.flags_from, tuple(flags), environ)
        if key in flag_sets:
            raise PlanError(
                f"{where}: states {flag_sets[key]!r} and {state.name!r} set the same flags "
                f"(from stages of the same {layer} flags); Unleash could not tell them apart"
            )
        flag_sets[key] = state.name
        check_rollback_to(
            state.gates, state_names, f"{where} state {state.name!r}: ", "state of this track"
        )
    return TrackPlan(name=entry.name, layer=layer, flags=tuple(flags), states=states)


def _track_state(
    entry: Entry, layer: str, gates: Mapping[str, GateSpec], environ: Mapping[str, str] | None
) -> TrackState:
    where, table = entry.where, entry.table
    flags_from = table.get("flags_from")
    if not isinstance(flags_from, str) or not flags_from:
        raise PlanError(
            f"{where}: 'flags_from' must name the stage file whose {layer} flags to use"
        )
    stage_file(flags_from, f"{where}: flags_from", environ)
    chosen = gate_list(table, gates, where)
    for gate in chosen:
        if gate.layer is not None and _GATE_LAYERS[gate.layer] != layer:
            raise PlanError(
                f"{where}: [gates.{gate.name}] judges layer {gate.layer} "
                f"({_GATE_LAYERS[gate.layer]}), not this track's layer {layer}"
            )
    requires = _requires(table.get("requires"), where)
    return TrackState(
        name=entry.name,
        flags_from=flags_from,
        min_observation=entry.observation(),
        gates=chosen,
        requires=requires,
    )


def _requires(value: Any, where: str) -> tuple[str, str] | None:
    """A state's `requires = "track:state"` as (track, state)."""
    if value is None:
        return None
    if not isinstance(value, str) or value.count(":") != 1 or not all(value.split(":")):
        raise PlanError(f"{where}: 'requires' must be 'track:state', e.g. 'l2:serve'")
    track, state = value.split(":")
    return track, state


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
