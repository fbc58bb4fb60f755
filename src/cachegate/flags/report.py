"""What a live Unleash server holds, compared with the stage files: `read_stage` (the stage an
environment matches, the kill switch, the last change) and `show_flags` (a readable table, and
the nearest stage with every difference). Used by `cachegate flags show` and the autopilot."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

from cachegate.flags.admin import (
    FlagAdminError,
    admin_session,
    base_url,
    feature_path,
    get_json,
    stage_features,
)
from cachegate.flags.stages import (
    FLAG_KILL_SWITCH,
    FLAGS,
    STICKINESS_FIELD,
    nearest_stage,
    stage_path,
    stages,
    strategy_key,
)

__all__ = ["ServerStage", "read_stage", "show_flags"]


@dataclass(frozen=True, slots=True)
class ServerStage:
    """What one environment of the server holds: the stage its flags match (None: no stage
    file, e.g. changed by hand; the kill switch is ignored for matching when it is on), whether
    the kill switch is on, and the unix time of the last change to a CacheGate flag there."""

    stage: str | None
    kill_switch: bool
    changed_at: float | None


def read_stage(
    unleash_url: str,
    admin_token: str,
    *,
    project: str = "default",
    environment: str = "development",
) -> ServerStage:
    """Which stage the server's flags match in `environment`, whether the kill switch is on, and
    when a CacheGate flag last changed there (from Unleash's event log)."""
    with admin_session(unleash_url, admin_token) as admin:
        flags: dict[str, Mapping[str, Any]] = {}
        for name in FLAGS:
            feature = get_json(admin, feature_path(project, name), missing_ok=True)
            if feature is None:
                continue
            for env in feature.get("environments", []):
                if env.get("name") == environment:
                    flags[name] = env
        events = get_json(
            admin,
            "/search/events?"
            + urlencode(
                {
                    "feature": "IS_ANY_OF:" + ",".join(FLAGS),
                    "environment": f"IS:{environment}",
                    "limit": "1",
                }
            ),
        )
    killed = bool(flags.get(FLAG_KILL_SWITCH, {}).get("enabled"))
    changed_at = None
    if isinstance(events, dict) and events.get("events"):
        changed_at = _timestamp(events["events"][0].get("createdAt"))
    return ServerStage(
        stage=_matching_stage(flags, ignore_kill_switch=killed),
        kill_switch=killed,
        changed_at=changed_at,
    )


def show_flags(unleash_url: str, admin_token: str, *, project: str = "default") -> str:
    """A readable table of the CacheGate flags on the server, per environment, and the stage
    each environment matches, or the nearest one and every flag that differs from it, and why."""
    with admin_session(unleash_url, admin_token) as admin:
        context = get_json(admin, f"/context/{quote(STICKINESS_FIELD)}", missing_ok=True)
        rows: list[tuple[str, str, str, str]] = []
        by_environment: dict[str, dict[str, Mapping[str, Any]]] = {}
        for name in FLAGS:
            feature = get_json(admin, feature_path(project, name), missing_ok=True)
            if feature is None:
                rows.append((name, "-", "missing", ""))
                continue
            for env in feature.get("environments", []):
                by_environment.setdefault(env["name"], {})[name] = env
                strategies = "; ".join(_describe(s) for s in env.get("strategies", []))
                rows.append((name, env["name"], "on" if env["enabled"] else "off", strategies))
    lines = [f"Unleash {base_url(unleash_url)}  project {project}"]
    if context is None:
        lines.append(f"context field {STICKINESS_FIELD}: missing")
    else:
        sticky = "usable as stickiness" if context.get("stickiness") else "NOT usable as stickiness"
        lines.append(f"context field {STICKINESS_FIELD}: present, {sticky}")
    lines.append("")
    lines.extend(_table(("FLAG", "ENVIRONMENT", "STATE", "STRATEGIES"), rows))
    lines.append("")
    for env_name, flags in sorted(by_environment.items()):
        nearest, differences = nearest_stage(flags)
        if nearest is None:
            lines.append(f"{env_name}: no stage files to compare with")
        elif not differences:
            lines.append(f"{env_name}: stage {nearest}")
        else:
            lines.append(f"{env_name}: nearest stage {nearest}; differs in:")
            lines.extend(f"  {line}" for line in differences)
    return "\n".join(lines)


def _describe(strategy: Mapping[str, Any]) -> str:
    parameters = strategy.get("parameters") or {}
    name = strategy.get("name", "?")
    if name == "flexibleRollout":
        text = f"{parameters.get('rollout', '?')}% by {parameters.get('stickiness', 'default')}"
    elif name == "default":
        text = "everyone"
    else:
        text = str(name)
    if strategy.get("constraints"):
        text += " with constraints"
    if strategy.get("disabled"):
        text += " (disabled)"
    return text


def _matching_stage(
    flags: Mapping[str, Mapping[str, Any]], *, ignore_kill_switch: bool = False
) -> str | None:
    """The first stage file whose flags equal `flags` (one environment's state), if any;
    with `ignore_kill_switch`, the kill switch's on/off state is left out of the comparison."""
    for name in stages():
        try:
            wanted = stage_features(stage_path(name))
        except (FlagAdminError, ValueError, OSError):
            continue
        if all(
            f["name"] in flags
            and (
                (ignore_kill_switch and f["name"] == FLAG_KILL_SWITCH)
                or bool(flags[f["name"]].get("enabled")) == bool(f["enabled"])
            )
            and [strategy_key(s) for s in flags[f["name"]].get("strategies", [])]
            == [strategy_key(s) for s in f.get("strategies") or []]
            for f in wanted
        ):
            return name
    return None


def _timestamp(text: Any) -> float | None:
    """Unix time of an ISO 8601 timestamp from Unleash, None if there is none."""
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
