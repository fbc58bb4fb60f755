"""Stage changes on a real Unleash server are atomic for clients, and the server's stage is read
back (what the autopilot derives its state from after a restart).

A thread polls the client API (`/api/client/features`, what every SDK fetches) as fast as it
can while `apply_stage` moves between stages; every payload it sees must be one stage's flags or
the kill switch on (every layer off), never a mix of two stages.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import httpx
from support.unleash_server import UnleashServer, unleash_server  # noqa: F401

from cachegate.flags import (
    FLAG_KILL_SWITCH,
    FLAGS,
    STAGES,
    apply_stage,
    read_stage,
    set_kill_switch,
    stage_path,
)

Shape = tuple[tuple[str, bool, tuple[tuple[str, str], ...]], ...]


def shape(features: Iterable[Mapping[str, Any]]) -> Shape:
    """What clients evaluate of the CacheGate flags: on/off and each strategy's rollout."""
    return tuple(
        sorted(
            (
                f["name"],
                bool(f["enabled"]),
                tuple(
                    (str(s["name"]), str((s.get("parameters") or {}).get("rollout")))
                    for s in f.get("strategies") or []
                ),
            )
            for f in features
            if f["name"] in FLAGS
        )
    )


def server_shape(server: UnleashServer) -> Shape:
    """The shape of the flags the server holds in its environment now."""
    features = []
    with server.admin() as admin:
        for name in FLAGS:
            path = f"/projects/{server.project}/features/{name}/environments/{server.environment}"
            state = admin.get(path).raise_for_status().json()
            features.append({**state, "name": name})
    return shape(features)


def stage_shape(name: str) -> Shape:
    return shape(json.loads(stage_path(name).read_text(encoding="utf-8"))["features"])


def killed(seen: Shape) -> bool:
    return any(name == FLAG_KILL_SWITCH and enabled for name, enabled, _ in seen)


class Observing(httpx.HTTPTransport):
    """The real transport, reading the server's flag state after every change.

    The client API serves a cache the server refreshes from this state at moments of its own
    choosing, so every state the database passes through is one some client can be served.
    """

    def __init__(self, server: UnleashServer, seen: list[Shape]) -> None:
        super().__init__()
        self.server = server
        self.seen = seen

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.method != "GET":
            response.read()
            self.seen.append(server_shape(self.server))
        return response


def test_clients_never_see_a_mix_of_two_stages(unleash_server: UnleashServer) -> None:  # noqa: F811
    server = unleash_server
    apply_stage(server.url, server.admin_token, "off")
    stages = {stage_shape(name): name for name in STAGES}
    moves = ("l1-100", "dark-launch", "l1-10", "l2", "l1-50", "off", "l1-100", "off")
    for stage in moves:
        seen: list[Shape] = []
        apply_stage(server.url, server.admin_token, stage, transport=Observing(server, seen))
        mixes = [s for s in seen if s not in stages and not killed(s)]
        assert not mixes, f"moving to {stage}, a client could see a mix of stages: {mixes[0]}"
        assert seen and seen[-1] == stage_shape(stage)


def test_one_change_is_applied_without_the_kill_switch(
    unleash_server: UnleashServer,  # noqa: F811
) -> None:
    server = unleash_server
    apply_stage(server.url, server.admin_token, "l1-10")
    events = server.event_count()
    apply_stage(server.url, server.admin_token, "l1-50")
    assert server.event_count() == events + 1, "10 % -> 50 % is one strategy edit"


def test_read_stage_and_the_kill_switch(unleash_server: UnleashServer) -> None:  # noqa: F811
    server = unleash_server
    apply_stage(server.url, server.admin_token, "l2")
    state = read_stage(server.url, server.admin_token)
    assert (state.stage, state.kill_switch) == ("l2", False)
    assert state.changed_at is not None
    set_kill_switch(server.url, server.admin_token, on=True)
    state = read_stage(server.url, server.admin_token)
    assert (state.stage, state.kill_switch) == ("l2", True)
    server.set_rollout("cachegate.l1.serve", 33)
    assert read_stage(server.url, server.admin_token).stage is None
    apply_stage(server.url, server.admin_token, "off")
    assert read_stage(server.url, server.admin_token).stage == "off"
    assert not read_stage(server.url, server.admin_token).kill_switch
