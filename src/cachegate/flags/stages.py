"""The flag names CacheGate reads, the stage files that define each rollout stage, and how a
server's flags differ from them.

A stage file is a client-features payload (`/api/client/features` format). The shipped stages are
packaged data (`cachegate/flags/stage_files/`, a link to the repository's `flags/`), found
through `importlib.resources`; `$CACHEGATE_FLAGS_DIR` overrides both. A rollout strategy
of a serve or shadow flag whose stickiness is not the tenant field is decided as if it were
(`sticky_payload`), so a dashboard edit cannot make a tenant flip between modes.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

logger = logging.getLogger("cachegate.flags")

FLAG_KILL_SWITCH = "cachegate.kill-switch"
FLAG_L1_SHADOW = "cachegate.l1.shadow"
FLAG_L1_SERVE = "cachegate.l1.serve"
FLAG_L2_SHADOW = "cachegate.l2.shadow"
FLAG_L2_SERVE = "cachegate.l2.serve"
FLAG_L1_VERIFY = "cachegate.l1.verify"
FLAGS = (
    FLAG_KILL_SWITCH,
    FLAG_L1_SHADOW,
    FLAG_L1_SERVE,
    FLAG_L2_SHADOW,
    FLAG_L2_SERVE,
    FLAG_L1_VERIFY,
)
"""Every flag CacheGate reads."""


@dataclass(frozen=True, slots=True)
class LayerFlags:
    """The flags of one cache layer: its serve and shadow switches, and any others it reads."""

    serve: str
    shadow: str
    others: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        """Every flag of the layer: shadow, serve, then the others."""
        return (self.shadow, self.serve, *self.others)


LAYER_FLAGS = {
    "l1": LayerFlags(serve=FLAG_L1_SERVE, shadow=FLAG_L1_SHADOW, others=(FLAG_L1_VERIFY,)),
    "l2": LayerFlags(serve=FLAG_L2_SERVE, shadow=FLAG_L2_SHADOW),
}
"""The flags of each layer, L1 then L2; the kill switch belongs to none."""

STICKINESS_FIELD = "workspaceId"
"""The Unleash context field that carries the tenant; `serve` rollouts are sticky on it."""

ROLLOUT_FLAGS = (FLAG_L1_SERVE, FLAG_L1_SHADOW, FLAG_L2_SERVE, FLAG_L2_SHADOW)
"""The flags whose percentage rollouts must be sticky on the tenant."""

_ROLLOUT_STRATEGIES = {
    "flexibleRollout": "rollout",
    "gradualRolloutRandom": "percentage",
    "gradualRolloutSessionId": "percentage",
    "gradualRolloutUserId": "percentage",
}
"""Percentage strategies, and the parameter holding their percentage."""

STAGES = ("off", "dark-launch", "l2", "l1-10", "l1-50", "l1-100")
"""The rollout stages shipped in `flags/`, in rollout order."""

FLAGS_DIR_ENV = "CACHEGATE_FLAGS_DIR"
STAGE_ENV = "CACHEGATE_STAGE"
DEFAULT_STAGE = "off"
DEFAULT_REFRESH_INTERVAL = 1
"""Seconds between the SDK's polls: a kill switch takes effect within about this long."""

STAGE_FILES = "stage_files"
"""The package's directory of stage files: a link to the repository's `flags/` in a checkout,
its copy in a wheel (the build follows the link). Read through `importlib.resources`."""


class UnknownStageError(ValueError):
    """A stage name with no file in the flags directory."""


def flags_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The directory of stage files: `$CACHEGATE_FLAGS_DIR`, else the package's `STAGE_FILES`."""
    env = os.environ if environ is None else environ
    override = env.get(FLAGS_DIR_ENV)
    if override:
        return Path(override)
    return Path(str(resources.files(__package__ or "cachegate.flags").joinpath(STAGE_FILES)))


def stages(environ: Mapping[str, str] | None = None) -> list[str]:
    """The stage names available in `flags_dir()`: shipped stages in rollout order, then others."""
    directory = flags_dir(environ)
    found = {p.stem for p in directory.glob("*.json")} if directory.is_dir() else set()
    return [s for s in STAGES if s in found] + sorted(found - set(STAGES))


def stage_path(name: str, environ: Mapping[str, str] | None = None) -> Path:
    """The file of stage `name`; raises `UnknownStageError` listing the stages if there is none."""
    directory = flags_dir(environ)
    path = directory / f"{name}.json"
    if "/" in name or "\\" in name or not path.is_file():
        known = ", ".join(stages(environ)) or "none"
        raise UnknownStageError(f"unknown flag stage {name!r} in {directory}; stages: {known}")
    return path


def read_payload(path: Path) -> str | None:
    """The features payload in `path`, or None (logged) if it cannot be read or is not one."""
    try:
        text = path.read_text(encoding="utf-8")
        parse_features(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        logger.warning("flag file %s is unreadable (%s): every layer is off", path, exc)
        return None
    return text


def parse_features(text: str) -> dict[str, Mapping[str, Any]]:
    """The features of a client-features payload by name; ValueError if it is not one."""
    data = json.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get("features"), list):
        raise ValueError("not a client-features payload (no 'features' list)")
    features: dict[str, Mapping[str, Any]] = {}
    for feature in data["features"]:
        if isinstance(feature, dict) and isinstance(feature.get("name"), str):
            features[feature["name"]] = feature
    return features


def strategy_key(strategy: Mapping[str, Any]) -> tuple[str, str, str, bool]:
    """What makes two strategies the same, ignoring ids, titles, sort order and variants."""
    parameters = {k: str(v) for k, v in (strategy.get("parameters") or {}).items()}
    return (
        str(strategy.get("name")),
        json.dumps(parameters, sort_keys=True),
        json.dumps(strategy.get("constraints") or [], sort_keys=True),
        bool(strategy.get("disabled", False)),
    )


def _not_sticky(name: str, strategy: Mapping[str, Any]) -> str | None:
    """Why a strategy of rollout flag `name` is not sticky on the tenant, or None if it is."""
    kind = strategy.get("name")
    if name not in ROLLOUT_FLAGS or kind not in _ROLLOUT_STRATEGIES:
        return None
    if kind != "flexibleRollout":
        return f"{kind} is not sticky on {STICKINESS_FIELD}"
    stickiness = (strategy.get("parameters") or {}).get("stickiness", "default")
    if stickiness == STICKINESS_FIELD:
        return None
    return f"stickiness {stickiness!r}, not {STICKINESS_FIELD!r}"


def _strategy_difference(
    name: str, got: Mapping[str, Any], want: Mapping[str, Any]
) -> tuple[str, int]:
    """How one strategy differs from the stage's, parameter by parameter where comparable, and
    in how many items."""
    reason = _not_sticky(name, got)
    changed: list[str] = []
    if got.get("name") != want.get("name"):
        text = f"strategy {got.get('name')} (stage: {want.get('name')})"
        changed.append(text)
    else:
        have = {k: str(v) for k, v in (got.get("parameters") or {}).items()}
        need = {k: str(v) for k, v in (want.get("parameters") or {}).items()}
        changed = [
            f"{key} {have.get(key, '-')} (stage: {need.get(key, '-')})"
            for key in sorted(set(have) | set(need))
            if have.get(key) != need.get(key)
        ]
        if (got.get("constraints") or []) != (want.get("constraints") or []):
            changed.append("constraints differ")
        if bool(got.get("disabled")) != bool(want.get("disabled")):
            changed.append("disabled" if got.get("disabled") else "enabled")
        text = ", ".join(changed) or "differs"
    if reason is not None:
        text += f"; not sticky on the tenant ({reason}): decided as if it were"
    return text, max(len(changed), 1)


def flag_differences(
    flags: Mapping[str, Mapping[str, Any]], stage: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """Every CacheGate flag of `flags` that differs from `stage` (both name -> feature with
    `enabled` and `strategies`), and why, one line each."""
    return [line for line, _ in _weighed_differences(flags, stage)]


def _weighed_differences(
    flags: Mapping[str, Mapping[str, Any]], stage: Mapping[str, Mapping[str, Any]]
) -> list[tuple[str, int]]:
    """`flag_differences`, each line with the number of items that differ in it."""
    lines: list[tuple[str, int]] = []
    for name in FLAGS:
        got, want = flags.get(name), stage.get(name)
        if want is None:
            continue
        if got is None:
            lines.append((f"{name}: missing (stage: {'on' if want.get('enabled') else 'off'})", 3))
            continue
        if bool(got.get("enabled")) != bool(want.get("enabled")):
            state = "on" if got.get("enabled") else "off"
            lines.append((f"{name}: {state} (stage: {'off' if state == 'on' else 'on'})", 1))
        have = list(got.get("strategies") or [])
        need = list(want.get("strategies") or [])
        if [strategy_key(x) for x in have] == [strategy_key(x) for x in need]:
            continue
        if len(have) != len(need):
            lines.append((f"{name}: {len(have)} strategies (stage: {len(need)})", 2))
            continue
        for index, (a, b) in enumerate(zip(have, need, strict=True)):
            if strategy_key(a) != strategy_key(b):
                where = f" strategy {index + 1}" if len(have) > 1 else ""
                text, weight = _strategy_difference(name, a, b)
                lines.append((f"{name}{where}: {text}", weight))
    return lines


def nearest_stage(
    flags: Mapping[str, Mapping[str, Any]], environ: Mapping[str, str] | None = None
) -> tuple[str | None, list[str]]:
    """The stage file nearest to `flags` (fewest differing items, then rollout order), and the
    differences; `(name, [])` when `flags` match a stage exactly, `(None, [])` with no stages."""
    best: tuple[str | None, list[str]] = (None, [])
    best_weight = 0
    for name in stages(environ):
        try:
            stage = parse_features(stage_path(name, environ).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        weighed = _weighed_differences(flags, stage)
        weight = sum(w for _, w in weighed)
        if best[0] is None or weight < best_weight:
            best, best_weight = (name, [line for line, _ in weighed]), weight
        if not weighed:
            break
    return best


def sticky_payload(payload: str) -> tuple[str, dict[str, int]]:
    """`payload` with every rollout strategy of the serve and shadow flags made sticky on the
    tenant, and how many strategies of each flag were changed; unchanged if it is unreadable."""
    try:
        data = json.loads(payload)
    except ValueError:
        return payload, {}
    if not isinstance(data, dict) or not isinstance(data.get("features"), list):
        return payload, {}
    overrides: dict[str, int] = {}
    for feature in data["features"]:
        if not isinstance(feature, dict) or not isinstance(feature.get("strategies"), list):
            continue
        name = feature.get("name")
        for index, strategy in enumerate(feature["strategies"]):
            if not isinstance(strategy, dict) or _not_sticky(str(name), strategy) is None:
                continue
            parameters = dict(strategy.get("parameters") or {})
            percentage = parameters.get(_ROLLOUT_STRATEGIES[strategy["name"]], "0")
            feature["strategies"][index] = {
                **strategy,
                "name": "flexibleRollout",
                "parameters": {
                    "rollout": str(percentage),
                    "stickiness": STICKINESS_FIELD,
                    "groupId": str(parameters.get("groupId") or name),
                },
            }
            overrides[str(name)] = overrides.get(str(name), 0) + 1
    return (json.dumps(data) if overrides else payload), overrides
