"""Move a live Unleash server to a rollout stage, and show what it holds, through the admin API.

The stage files in `flags/` are the single definition of each stage: `apply_stage` creates the
six CacheGate flags and the `workspaceId` context field if missing, then makes the flags'
strategies and on/off state in one environment equal to the file's. Running it twice changes
nothing the second time. Used by `cachegate flags apply`; `report.py` reads what a server holds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from cachegate.flags.stages import (
    FLAG_KILL_SWITCH,
    FLAGS,
    STICKINESS_FIELD,
    stage_path,
    strategy_key,
)

__all__ = [
    "FlagAdminError",
    "apply_stage",
    "set_kill_switch",
]

_TIMEOUT = 10.0


class FlagAdminError(RuntimeError):
    """The Unleash admin API could not be reached or refused a change."""


@dataclass(frozen=True, slots=True)
class _Change:
    """One admin API call that changes one flag."""

    flag: str
    method: str
    path: str
    body: Any = None
    switch: bool = False


def apply_stage(
    unleash_url: str,
    admin_token: str,
    stage: str,
    *,
    project: str = "default",
    environment: str = "development",
    transport: httpx.BaseTransport | None = None,
) -> None:
    """Move the CacheGate flags of `project`/`environment` to `stage`, creating what is missing.

    Clients never see a mix of two stages. One change (one flag switched, or one strategy edited)
    is applied as it is: Unleash changes it at once. Several are bracketed by the kill switch:
    its strategy is made the file's while it is off (invisible), it is turned on (every layer
    off), the other flags are changed behind it, and it is turned off again last unless the stage
    keeps it on. A client polling meanwhile sees the old stage, all off, then the new stage.
    `transport` replaces httpx's (tests observe the server after every call with it).
    Raises `UnknownStageError` for an unknown stage and `FlagAdminError` on HTTP failures.
    """
    features = stage_features(stage_path(stage))
    with admin_session(unleash_url, admin_token, transport) as admin:
        _ensure_context_field(admin)
        for feature in features:
            _ensure_feature(admin, project, feature)
        states = {f["name"]: _environment(admin, project, f["name"], environment) for f in features}
        changes = _changes(project, environment, features, states)
        for change in _atomic_order(changes, states, features, project, environment):
            _request(admin, change.method, change.path, change.body)


def set_kill_switch(
    unleash_url: str,
    admin_token: str,
    *,
    on: bool,
    project: str = "default",
    environment: str = "development",
) -> None:
    """Turn the kill switch on (every layer off for everyone) or off: one change, at once."""
    with admin_session(unleash_url, admin_token) as admin:
        _switch(admin, project, FLAG_KILL_SWITCH, environment, on=on)


# --- HTTP --------------------------------------------------------------------------------------


def base_url(unleash_url: str) -> str:
    """The server root, accepting the SDK form (`.../api`) too."""
    url = unleash_url.rstrip("/")
    return url[: -len("/api")] if url.endswith("/api") else url


@contextmanager
def admin_session(
    unleash_url: str, admin_token: str, transport: httpx.BaseTransport | None = None
) -> Iterator[httpx.Client]:
    if not admin_token:
        raise FlagAdminError(
            "no admin token: set UNLEASH_ADMIN_TOKEN to an Unleash admin API token"
        )
    headers = {"Authorization": admin_token, "Accept": "application/json"}
    base = base_url(unleash_url) + "/api/admin"
    with httpx.Client(
        base_url=base, headers=headers, timeout=_TIMEOUT, transport=transport
    ) as client:
        yield client


def _request(
    admin: httpx.Client, method: str, path: str, body: Any = None, *, missing_ok: bool = False
) -> Any:
    """Send one admin request; the decoded JSON answer, None for 404 if `missing_ok`."""
    try:
        response = admin.request(method, path, json=body)
    except httpx.HTTPError as exc:
        raise FlagAdminError(f"cannot reach Unleash at {admin.base_url}: {exc}") from exc
    if missing_ok and response.status_code == 404:
        return None
    if response.status_code >= 400:
        raise FlagAdminError(_describe_failure(method, path, response))
    if not response.content:
        return None
    try:
        return response.json()
    except json.JSONDecodeError:
        return None


def _describe_failure(method: str, path: str, response: httpx.Response) -> str:
    try:
        answer = response.json()
        detail = answer.get("message") or answer.get("details") or response.text
    except (json.JSONDecodeError, AttributeError):
        detail = response.text[:200]
    hint = ""
    if response.status_code in (401, 403):
        hint = " (is UNLEASH_ADMIN_TOKEN an admin token for this server?)"
    return f"Unleash refused {method} /api/admin{path}: HTTP {response.status_code} {detail}{hint}"


def get_json(admin: httpx.Client, path: str, *, missing_ok: bool = False) -> Any:
    return _request(admin, "GET", path, missing_ok=missing_ok)


def feature_path(project: str, name: str) -> str:
    return f"/projects/{quote(project)}/features/{quote(name)}"


def _environment_path(project: str, name: str, environment: str) -> str:
    return f"{feature_path(project, name)}/environments/{quote(environment)}"


# --- applying ----------------------------------------------------------------------------------


def stage_features(path: Path) -> list[dict[str, Any]]:
    """The CacheGate flags of a stage file, in `FLAGS` order; every flag must be there."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FlagAdminError(f"cannot read stage file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise FlagAdminError(f"{path} is not a client-features document")
    by_name = {f["name"]: f for f in data.get("features", []) if isinstance(f, dict)}
    missing = [name for name in FLAGS if name not in by_name]
    if missing:
        raise FlagAdminError(f"{path} does not define {', '.join(missing)}")
    return [by_name[name] for name in FLAGS]


def _ensure_context_field(admin: httpx.Client) -> None:
    field = get_json(admin, f"/context/{quote(STICKINESS_FIELD)}", missing_ok=True)
    body = {
        "name": STICKINESS_FIELD,
        "description": "The tenant (workspace); CacheGate's serve rollouts are sticky on it.",
        "stickiness": True,
    }
    if field is None:
        _request(admin, "POST", "/context", body)
    elif not field.get("stickiness"):
        body["description"] = field.get("description") or body["description"]
        _request(admin, "PUT", f"/context/{quote(STICKINESS_FIELD)}", body)


def _ensure_feature(admin: httpx.Client, project: str, feature: Mapping[str, Any]) -> None:
    if get_json(admin, feature_path(project, feature["name"]), missing_ok=True) is not None:
        return
    body = {
        "name": feature["name"],
        "type": feature.get("type", "release"),
        "description": feature.get("description", ""),
        "impressionData": False,
    }
    try:
        _request(admin, "POST", f"/projects/{quote(project)}/features", body)
    except FlagAdminError as exc:
        raise FlagAdminError(
            f"{exc} - if the flag is archived, revive it in the Unleash dashboard"
        ) from None


def _environment(admin: httpx.Client, project: str, name: str, environment: str) -> Any:
    state = get_json(admin, _environment_path(project, name, environment))
    if not isinstance(state, dict):
        raise FlagAdminError(f"Unleash gave no state for {name} in {environment}")
    return state


def _switch(admin: httpx.Client, project: str, name: str, environment: str, *, on: bool) -> None:
    change = _switch_change(project, name, environment, on=on)
    _request(admin, change.method, change.path)


def _strategy_body(strategy: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": strategy["name"],
        "parameters": {k: str(v) for k, v in (strategy.get("parameters") or {}).items()},
        "constraints": strategy.get("constraints") or [],
        "variants": strategy.get("variants") or [],
        "segments": [],
        "disabled": False,
    }


def _strategy_changes(
    project: str,
    environment: str,
    feature: Mapping[str, Any],
    state: Mapping[str, Any],
) -> list[_Change]:
    """The calls that make the environment's strategies equal to the file's, in place where
    possible."""
    name = feature["name"]
    path = f"{_environment_path(project, name, environment)}/strategies"
    wanted: Sequence[Mapping[str, Any]] = feature.get("strategies") or []
    existing: Sequence[Mapping[str, Any]] = state.get("strategies") or []
    changes: list[_Change] = []
    for index, strategy in enumerate(wanted):
        if index < len(existing):
            if strategy_key(existing[index]) != strategy_key(strategy):
                strategy_id = quote(str(existing[index]["id"]))
                changes.append(
                    _Change(name, "PUT", f"{path}/{strategy_id}", _strategy_body(strategy))
                )
        else:
            changes.append(_Change(name, "POST", path, _strategy_body(strategy)))
    for extra in existing[len(wanted) :]:
        changes.append(_Change(name, "DELETE", f"{path}/{quote(str(extra['id']))}"))
    return changes


def _switch_change(project: str, name: str, environment: str, *, on: bool) -> _Change:
    action = "on" if on else "off"
    return _Change(
        name, "POST", f"{_environment_path(project, name, environment)}/{action}", switch=True
    )


def _changes(
    project: str,
    environment: str,
    features: Sequence[Mapping[str, Any]],
    states: Mapping[str, Mapping[str, Any]],
) -> list[_Change]:
    """Every call from `states` to the stage's `features`: switches off, strategies, switches on."""
    changes: list[_Change] = []
    for feature in features:
        if not feature["enabled"] and states[feature["name"]]["enabled"]:
            changes.append(_switch_change(project, feature["name"], environment, on=False))
    for feature in features:
        changes.extend(_strategy_changes(project, environment, feature, states[feature["name"]]))
    for feature in features:
        if feature["enabled"] and not states[feature["name"]]["enabled"]:
            changes.append(_switch_change(project, feature["name"], environment, on=True))
    return changes


def _atomic_order(
    changes: Sequence[_Change],
    states: Mapping[str, Mapping[str, Any]],
    features: Sequence[Mapping[str, Any]],
    project: str,
    environment: str,
) -> list[_Change]:
    """`changes` ordered so that clients never see a mix of two stages (see `apply_stage`)."""
    if len(changes) <= 1:
        return list(changes)
    kill = [c for c in changes if c.flag == FLAG_KILL_SWITCH]
    others = [c for c in changes if c.flag != FLAG_KILL_SWITCH]
    kill_strategies = [c for c in kill if not c.switch]
    if not others:
        return kill_strategies + [c for c in kill if c.switch]
    kill_on = bool(states[FLAG_KILL_SWITCH]["enabled"])
    target_on = bool(next(f for f in features if f["name"] == FLAG_KILL_SWITCH)["enabled"])
    ordered: list[_Change] = []
    if not kill_on:
        ordered += kill_strategies
        ordered.append(_switch_change(project, FLAG_KILL_SWITCH, environment, on=True))
    ordered += others
    if kill_on:
        ordered += kill_strategies
    if not target_on:
        ordered.append(_switch_change(project, FLAG_KILL_SWITCH, environment, on=False))
    return ordered
