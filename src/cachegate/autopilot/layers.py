"""One layer's flags in Unleash: which state of its track they match, and moving them alone.

A track (see `plan.TrackPlan`) owns its layer's flags only. `UnleashLayers.apply` changes those
flags and nothing else, with the same guarantee as `flags.apply_stage`: one change is applied
as it is; several are bracketed by the kill switch (every layer off for a moment, then the new
state), so no client ever evaluates a mix of two states of one layer. It never turns the kill
switch off: when a person has turned it on, it moves nothing. Built on `cachegate.flags.admin`'s
admin API helpers so that stage moves and track moves share one implementation of the API.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx

from cachegate.autopilot.plan import Plan, TrackPlan, TrackState
from cachegate.flags import FLAG_KILL_SWITCH, stage_path
from cachegate.flags import admin as fa
from cachegate.flags import report as flag_report
from cachegate.flags.stages import strategy_key

__all__ = ["LayersView", "TrackView", "UnleashLayers"]


@dataclass(frozen=True, slots=True)
class TrackView:
    """A track as Unleash holds it: the state its flags match (None: none of the plan's) and
    the unix time of the last change to its flags or to the kill switch (None: unknown)."""

    state: str | None
    changed_at: float | None


@dataclass(frozen=True, slots=True)
class LayersView:
    """Every track of the plan and the kill switch, read in one pass."""

    kill_switch: bool
    tracks: Mapping[str, TrackView]


def _features(stage: str) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in fa.stage_features(stage_path(stage))}


def _matches(env: Mapping[str, Any] | None, feature: Mapping[str, Any]) -> bool:
    if env is None:
        return False
    return bool(env.get("enabled")) == bool(feature["enabled"]) and [
        strategy_key(s) for s in env.get("strategies", [])
    ] == [strategy_key(s) for s in feature.get("strategies") or []]


@dataclass(frozen=True, slots=True)
class UnleashLayers:
    """The tracks of `plan` over one project and environment of an Unleash server."""

    url: str
    admin_token: str
    plan: Plan
    project: str = "default"
    environment: str = "development"
    transport: httpx.BaseTransport | None = None
    """Replaces httpx's transport (tests observe the server after every call with it)."""

    def read(self) -> LayersView:
        """Each track's state and start, and the kill switch."""
        flags = {flag for track in self.plan.tracks for flag in track.flags} | {FLAG_KILL_SWITCH}
        with fa.admin_session(self.url, self.admin_token) as admin:
            envs: dict[str, Mapping[str, Any]] = {}
            for name in sorted(flags):
                feature = fa.get_json(admin, fa.feature_path(self.project, name), missing_ok=True)
                for env in (feature or {}).get("environments", []):
                    if env.get("name") == self.environment:
                        envs[name] = env
            starts = {
                track.name: self._last_change(admin, (*track.flags, FLAG_KILL_SWITCH))
                for track in self.plan.tracks
            }
        tracks = {}
        for track in self.plan.tracks:
            state = next(
                (
                    s.name
                    for s in track.states
                    if all(
                        _matches(envs.get(flag), _features(s.flags_from)[flag])
                        for flag in track.flags
                    )
                ),
                None,
            )
            tracks[track.name] = TrackView(state=state, changed_at=starts[track.name])
        killed = bool(envs.get(FLAG_KILL_SWITCH, {}).get("enabled"))
        return LayersView(kill_switch=killed, tracks=tracks)

    def _last_change(self, admin: Any, flags: tuple[str, ...]) -> float | None:
        query = urlencode(
            {
                "feature": "IS_ANY_OF:" + ",".join(flags),
                "environment": f"IS:{self.environment}",
                "limit": "1",
            }
        )
        events = fa.get_json(admin, "/search/events?" + query)
        if isinstance(events, dict) and events.get("events"):
            return flag_report._timestamp(events["events"][0].get("createdAt"))
        return None

    def apply(self, track: TrackPlan, state: TrackState) -> bool:
        """Move `track`'s flags (only those) to `state`; False, moving nothing, while the kill
        switch is on."""
        wanted = _features(state.flags_from)
        features = [wanted[flag] for flag in track.flags]
        kill = wanted[FLAG_KILL_SWITCH]
        with fa.admin_session(self.url, self.admin_token, self.transport) as admin:
            fa._ensure_context_field(admin)
            for feature in (*features, kill):
                fa._ensure_feature(admin, self.project, feature)
            names = (*track.flags, FLAG_KILL_SWITCH)
            states = {
                name: fa._environment(admin, self.project, name, self.environment) for name in names
            }
            if states[FLAG_KILL_SWITCH]["enabled"]:
                return False
            changes = fa._changes(self.project, self.environment, features, states)
            keep_kill = {**kill, "enabled": False}
            for change in fa._atomic_order(
                changes, states, [*features, keep_kill], self.project, self.environment
            ):
                fa._request(admin, change.method, change.path, change.body)
        return True

    def kill(self) -> None:
        """Turn the kill switch on: every layer off for everyone, in one change."""
        fa.set_kill_switch(
            self.url,
            self.admin_token,
            on=True,
            project=self.project,
            environment=self.environment,
        )
