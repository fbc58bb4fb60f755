"""Move a live Unleash server to a rollout stage, and show what it holds, through the admin API.

The stage files in `flags/` are the single definition of each stage: `apply_stage` creates the
six CacheGate flags and the `workspaceId` context field if missing, then makes the flags'
strategies and on/off state in one environment equal to the file's. Running it twice changes
nothing the second time. Used by `cachegate flags apply` and `cachegate flags show`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from cachegate.flags import FLAGS, STICKINESS_FIELD, nearest_stage, stage_path

__all__ = ["FlagAdminError", "apply_stage", "show_flags"]

_TIMEOUT = 10.0


class FlagAdminError(RuntimeError):
    """The Unleash admin API could not be reached or refused a change."""


def apply_stage(
    unleash_url: str,
    admin_token: str,
    stage: str,
    *,
    project: str = "default",
    environment: str = "development",
) -> None:
    """Move the CacheGate flags of `project`/`environment` to `stage`, creating what is missing.

    Order limits what clients can observe half-way: flags the stage turns off are turned off
    first, then strategies are set, then flags are turned on (shadow before serve).
    Raises `UnknownStageError` for an unknown stage and `FlagAdminError` on HTTP failures.
    """
    features = _stage_features(stage_path(stage))
    with _admin(unleash_url, admin_token) as admin:
        _ensure_context_field(admin)
        for feature in features:
            _ensure_feature(admin, project, feature)
        states = {f["name"]: _environment(admin, project, f["name"], environment) for f in features}
        for feature in features:
            if not feature["enabled"] and states[feature["name"]]["enabled"]:
                _switch(admin, project, feature["name"], environment, on=False)
        for feature in features:
            _sync_strategies(admin, project, environment, feature, states[feature["name"]])
        for feature in features:
            if feature["enabled"] and not states[feature["name"]]["enabled"]:
                _switch(admin, project, feature["name"], environment, on=True)


def show_flags(unleash_url: str, admin_token: str, *, project: str = "default") -> str:
    """A readable table of the CacheGate flags on the server, per environment, and the stage
    each environment matches, or the nearest one and every flag that differs from it, and why."""
    with _admin(unleash_url, admin_token) as admin:
        context = _get(admin, f"/context/{quote(STICKINESS_FIELD)}", missing_ok=True)
        rows: list[tuple[str, str, str, str]] = []
        by_environment: dict[str, dict[str, Mapping[str, Any]]] = {}
        for name in FLAGS:
            feature = _get(admin, _feature_path(project, name), missing_ok=True)
            if feature is None:
                rows.append((name, "-", "missing", ""))
                continue
            for env in feature.get("environments", []):
                by_environment.setdefault(env["name"], {})[name] = env
                strategies = "; ".join(_describe(s) for s in env.get("strategies", []))
                rows.append((name, env["name"], "on" if env["enabled"] else "off", strategies))
    lines = [f"Unleash {_base_url(unleash_url)}  project {project}"]
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


# --- HTTP --------------------------------------------------------------------------------------


def _base_url(unleash_url: str) -> str:
    """The server root, accepting the SDK form (`.../api`) too."""
    url = unleash_url.rstrip("/")
    return url[: -len("/api")] if url.endswith("/api") else url


@contextmanager
def _admin(unleash_url: str, admin_token: str) -> Iterator[httpx.Client]:
    if not admin_token:
        raise FlagAdminError(
            "no admin token: set UNLEASH_ADMIN_TOKEN to an Unleash admin API token"
        )
    headers = {"Authorization": admin_token, "Accept": "application/json"}
    base = _base_url(unleash_url) + "/api/admin"
    with httpx.Client(base_url=base, headers=headers, timeout=_TIMEOUT) as client:
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


def _get(admin: httpx.Client, path: str, *, missing_ok: bool = False) -> Any:
    return _request(admin, "GET", path, missing_ok=missing_ok)


def _feature_path(project: str, name: str) -> str:
    return f"/projects/{quote(project)}/features/{quote(name)}"


def _environment_path(project: str, name: str, environment: str) -> str:
    return f"{_feature_path(project, name)}/environments/{quote(environment)}"


# --- applying ----------------------------------------------------------------------------------


def _stage_features(path: Path) -> list[dict[str, Any]]:
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
    field = _get(admin, f"/context/{quote(STICKINESS_FIELD)}", missing_ok=True)
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
    if _get(admin, _feature_path(project, feature["name"]), missing_ok=True) is not None:
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
    state = _get(admin, _environment_path(project, name, environment))
    if not isinstance(state, dict):
        raise FlagAdminError(f"Unleash gave no state for {name} in {environment}")
    return state


def _switch(admin: httpx.Client, project: str, name: str, environment: str, *, on: bool) -> None:
    action = "on" if on else "off"
    _request(admin, "POST", f"{_environment_path(project, name, environment)}/{action}")


def _normal(strategy: Mapping[str, Any]) -> tuple[str, str, str, bool]:
    """What makes two strategies the same, ignoring ids, titles and sort order fields."""
    parameters = {k: str(v) for k, v in (strategy.get("parameters") or {}).items()}
    return (
        str(strategy.get("name")),
        json.dumps(parameters, sort_keys=True),
        json.dumps(strategy.get("constraints") or [], sort_keys=True),
        bool(strategy.get("disabled", False)),
    )


def _strategy_body(strategy: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": strategy["name"],
        "parameters": {k: str(v) for k, v in (strategy.get("parameters") or {}).items()},
        "constraints": strategy.get("constraints") or [],
        "variants": strategy.get("variants") or [],
        "segments": [],
        "disabled": False,
    }


def _sync_strategies(
    admin: httpx.Client,
    project: str,
    environment: str,
    feature: Mapping[str, Any],
    state: Mapping[str, Any],
) -> None:
    """Make the environment's strategies equal to the file's, updating in place where possible."""
    path = f"{_environment_path(project, feature['name'], environment)}/strategies"
    wanted: Sequence[Mapping[str, Any]] = feature.get("strategies") or []
    existing: Sequence[Mapping[str, Any]] = state.get("strategies") or []
    for index, strategy in enumerate(wanted):
        if index < len(existing):
            if _normal(existing[index]) != _normal(strategy):
                strategy_id = quote(str(existing[index]["id"]))
                _request(admin, "PUT", f"{path}/{strategy_id}", _strategy_body(strategy))
        else:
            _request(admin, "POST", path, _strategy_body(strategy))
    for extra in existing[len(wanted) :]:
        _request(admin, "DELETE", f"{path}/{quote(str(extra['id']))}")


# --- showing -----------------------------------------------------------------------------------


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


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
