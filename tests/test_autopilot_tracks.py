"""Per-layer tracks against the real Unleash server: each track advances, holds and rolls back
on its own gates, touches only its layer's flags (atomically for clients), is read back from
Unleash after a restart, waits for the track it requires, and the kill switch wins over both.
Figures come from a table (the real Prometheus is in `test_autopilot_e2e.py`); time since a
state began is moved with an injected clock.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from support.unleash_server import UnleashServer, unleash_server  # noqa: F401
from test_flagadmin_atomic import Observing, Shape, killed, server_shape, stage_shape

from cachegate import cli
from cachegate.autopilot.controller import KILL_SWITCH, Action, Decision
from cachegate.autopilot.gates import MetricsUnavailable
from cachegate.autopilot.layers import UnleashLayers
from cachegate.autopilot.plan import Plan, default_plan_path, parse_plan
from cachegate.autopilot.report import decision_dict, render_json
from cachegate.autopilot.tracks import TrackController
from cachegate.flags import apply_stage, read_stage, set_kill_switch

TRACKS_FILE = default_plan_path().parent / "rollout-tracks.toml"

L1_COMPARED = 'cache_layer="query_result",kind=~"shadow|verify",outcome=~"match|mismatch"'
L1_MISMATCH = 'cache_layer="query_result",kind=~"shadow|verify",outcome=~"mismatch"'
L2_COMPARED = 'cache_layer="embedding",kind=~"shadow|verify",outcome=~"match|mismatch"'
L2_MISMATCH = 'cache_layer="embedding",kind=~"shadow|verify",outcome=~"mismatch"'


def agreement(layer: str, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "agreement",
        "layer": layer,
        "max_excess": 0.01,
        "min_sample": 100,
        "window": "30m",
        "failure_limit": 2,
        "on_fail": "rollback",
        **extra,
    }


def plan() -> Plan:
    return parse_plan(
        {
            "version": 1,
            "settle": "5s",
            "tracks": [
                {
                    "name": "l2",
                    "layer": "l2",
                    "states": [
                        {"name": "off", "flags_from": "off", "gates": ["traffic"]},
                        {"name": "shadow", "flags_from": "dark-launch", "gates": ["l2-agree"]},
                        {"name": "serve", "flags_from": "l2", "gates": ["traffic"]},
                    ],
                },
                {
                    "name": "l1",
                    "layer": "l1",
                    "states": [
                        {"name": "off", "flags_from": "off", "gates": ["traffic"]},
                        {"name": "shadow", "flags_from": "dark-launch", "gates": ["l1-agree"]},
                        {
                            "name": "l1-10",
                            "flags_from": "l1-10",
                            "requires": "l2:serve",
                            "gates": ["l1-agree"],
                        },
                        {"name": "l1-100", "flags_from": "l1-100", "gates": ["l1-agree"]},
                    ],
                },
            ],
            "gates": {
                "traffic": {
                    "kind": "sample",
                    "count": "requests[$window]",
                    "min_sample": 100,
                    "window": "10m",
                },
                "l1-agree": agreement("query_result", rollback_to="shadow"),
                "l2-agree": agreement("embedding"),
            },
        },
        environ={},
    )


class Figures:
    """Prometheus' answers by query fragment."""

    def __init__(self) -> None:
        self.values: dict[str, float | None] = {}
        self.down = False

    def query(self, expr: str, *, at: float | None = None) -> float | None:
        if self.down:
            raise MetricsUnavailable("connection refused")
        for fragment, value in self.values.items():
            if fragment in expr:
                return value
        return None

    def healthy(self) -> None:
        self.values = {
            "requests": 500.0,
            L1_COMPARED: 2000.0,
            L1_MISMATCH: 0.0,
            L2_COMPARED: 2000.0,
            L2_MISMATCH: 0.0,
        }


class Clock:
    def __init__(self) -> None:
        self.shift = 3600.0

    def __call__(self) -> float:
        return time.time() + self.shift


Setup = tuple[TrackController, Figures, Clock, UnleashLayers, UnleashServer]


@pytest.fixture
def setup(unleash_server: UnleashServer) -> Setup:  # noqa: F811
    server = unleash_server
    apply_stage(server.url, server.admin_token, "off")
    layers = UnleashLayers(server.url, server.admin_token, plan())
    figures, clock = Figures(), Clock()
    figures.healthy()
    controller = TrackController(plan(), figures, layers, clock=clock)
    return controller, figures, clock, layers, server


def by_track(decisions: tuple[Decision, ...]) -> dict[str | None, Decision]:
    return {d.track: d for d in decisions}


def states(layers: UnleashLayers) -> dict[str, str | None]:
    return {name: view.state for name, view in layers.read().tracks.items()}


def move(layers: UnleashLayers, track: str, state: str) -> None:
    t = layers.plan.track(track)
    assert layers.apply(t, t.states[t.index(state)])


def test_both_tracks_advance_on_their_own_and_l1_waits_for_l2_to_serve(setup: Setup) -> None:
    controller, _figures, _clock, layers, server = setup
    assert states(layers) == {"l2": "off", "l1": "off"}
    first = by_track(controller.step())
    assert {t: (d.action, d.target, d.applied) for t, d in first.items()} == {
        "l2": (Action.ADVANCE, "shadow", True),
        "l1": (Action.ADVANCE, "shadow", True),
    }
    assert states(layers) == {"l2": "shadow", "l1": "shadow"}
    assert read_stage(server.url, server.admin_token).stage == "dark-launch"
    # Both pass their shadow gates in the same step: L2 moves to serve, L1 waits for it.
    second = by_track(controller.step())
    assert (second["l2"].action, second["l2"].target) == (Action.ADVANCE, "serve")
    assert (second["l1"].action, second["l1"].code) == (Action.HOLD, "waiting_for_track")
    assert "waits for track l2 to reach serve" in second["l1"].reason
    assert states(layers) == {"l2": "serve", "l1": "shadow"}
    third = by_track(controller.step())
    assert (third["l1"].action, third["l1"].target) == (Action.ADVANCE, "l1-10")
    assert (third["l2"].action, third["l2"].code) == (Action.COMPLETE, "complete")
    assert states(layers) == {"l2": "serve", "l1": "l1-10"}
    assert read_stage(server.url, server.admin_token).stage == "l1-10"


def test_stale_l1_rolls_back_the_l1_track_while_l2_advances(setup: Setup) -> None:
    controller, figures, clock, layers, server = setup
    move(layers, "l2", "shadow")
    move(layers, "l1", "l1-100")
    figures.values[L1_MISMATCH] = 200.0  # 10 % of L1 answers stale
    first = by_track(controller.step())
    assert (first["l1"].action, first["l1"].code) == (Action.HOLD, "gate_failing")
    assert (first["l2"].action, first["l2"].target, first["l2"].applied) == (
        Action.ADVANCE,
        "serve",
        True,
    )
    second = by_track(controller.step())
    assert (second["l1"].action, second["l1"].target) == (Action.ROLLBACK, "shadow")
    assert "agreement below bound" in second["l1"].reason
    assert second["l1"].applied
    assert (second["l2"].action, second["l2"].code) == (Action.COMPLETE, "complete")
    assert states(layers) == {"l2": "serve", "l1": "shadow"}
    assert server_shape(server) == stage_shape("l2")  # L2 serves, L1 is back in shadow
    # A restarted controller reads both tracks back and does not roll back again.
    figures.healthy()
    again = by_track(TrackController(plan(), figures, layers, clock=clock).status())
    assert (again["l1"].stage, again["l2"].stage) == ("shadow", "serve")
    assert again["l1"].action is Action.ADVANCE and again["l1"].target == "l1-10"


def test_l2_rolls_back_alone_and_l1_keeps_serving(setup: Setup) -> None:
    controller, figures, _clock, layers, _server = setup
    move(layers, "l2", "shadow")
    move(layers, "l1", "l1-10")
    figures.values[L2_MISMATCH] = 400.0
    first = by_track(controller.step())
    assert (first["l2"].action, first["l2"].code) == (Action.HOLD, "gate_failing")
    assert (first["l1"].action, first["l1"].target) == (Action.ADVANCE, "l1-100")
    decisions = by_track(controller.step())
    # The L2 shadow gate rolls L2 back to off; L1, judged by its own gates, keeps serving.
    assert (decisions["l2"].action, decisions["l2"].target) == (Action.ROLLBACK, "off")
    assert (decisions["l1"].action, decisions["l1"].code) == (Action.COMPLETE, "complete")
    assert states(layers) == {"l2": "off", "l1": "l1-100"}


def test_the_kill_switch_wins_over_both_tracks(setup: Setup) -> None:
    controller, figures, _clock, layers, server = setup
    move(layers, "l2", "shadow")
    set_kill_switch(server.url, server.admin_token, on=True)
    before = server_shape(server)
    for decisions in (controller.status(), controller.step()):
        assert [(d.track, d.action, d.code) for d in decisions] == [
            ("l2", Action.HOLD, "kill_switch"),
            ("l1", Action.HOLD, "kill_switch"),
        ]
    figures.values[L1_MISMATCH] = 2000.0
    controller.step()
    controller.step()
    assert server_shape(server) == before
    # A move asked for while the switch is on moves nothing and leaves the switch on.
    track = plan().track("l1")
    assert not layers.apply(track, track.states[1])
    assert server_shape(server) == before
    assert layers.read().kill_switch
    # A manual rollback without a track pulls the kill switch.
    set_kill_switch(server.url, server.admin_token, on=False)
    decision = controller.rollback()
    assert (decision.target, decision.applied) == (KILL_SWITCH, True)
    assert layers.read().kill_switch


def test_a_track_move_touches_only_its_layer_and_clients_never_see_a_mix(
    setup: Setup,
) -> None:
    _controller, _figures, _clock, layers, server = setup
    move(layers, "l2", "serve")
    move(layers, "l1", "shadow")
    seen: list[Shape] = []
    observed = UnleashLayers(
        server.url, server.admin_token, plan(), transport=Observing(server, seen)
    )
    track = plan().track("l1")
    assert observed.apply(track, track.states[2])  # shadow -> l1-10: three flags change
    assert observed.apply(track, track.states[1])  # and back
    allowed = {stage_shape("l2"), stage_shape("l1-10")}
    assert seen
    mixes = [shape for shape in seen if shape not in allowed and not killed(shape)]
    assert mixes == []
    assert server_shape(server) == stage_shape("l2")


def test_manual_rollback_of_one_track_and_dry_run(setup: Setup) -> None:
    controller, figures, clock, layers, _server = setup
    move(layers, "l2", "serve")
    move(layers, "l1", "l1-10")
    dry = TrackController(plan(), figures, layers, clock=clock, dry_run=True)
    decisions = dry.step()
    assert all(not d.applied for d in decisions)
    assert states(layers) == {"l2": "serve", "l1": "l1-10"}
    decision = controller.rollback("l1")
    assert (decision.track, decision.stage, decision.target, decision.applied) == (
        "l1",
        "l1-10",
        "shadow",
        True,
    )
    assert states(layers) == {"l2": "serve", "l1": "shadow"}


def test_decisions_carry_their_track_in_json(setup: Setup) -> None:
    controller, _figures, _clock, _layers, _server = setup
    decisions = controller.status()
    lines = [json.loads(line) for line in render_json(decisions).splitlines()]
    assert [line["track"] for line in lines] == ["l2", "l1"]
    assert decision_dict(decisions[0])["stage"] == "off"


def test_cli_status_step_run_and_rollback_of_a_track_plan(
    unleash_server: UnleashServer,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = unleash_server
    apply_stage(server.url, server.admin_token, "l1-10")
    monkeypatch.setenv(cli.ADMIN_TOKEN_ENV, server.admin_token)
    plan_file = str(TRACKS_FILE)
    args = ["--prometheus", "http://127.0.0.1:9", "--unleash-url", server.url, "--json"]
    args += ["--plan", plan_file]
    assert cli.main(["rollout", "status", *args]) == cli.OK
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["track"], r["stage"], r["action"]) for r in records] == [
        ("l2", "serve", "hold"),
        ("l1", "l1-10", "hold"),
    ]
    assert {r["code"] for r in records} <= {"metrics_unavailable", "settling"}
    assert cli.main(["rollout", "run", *args, "--timeout", "0", "--interval", "0"]) == cli.FAILED
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert cli.main(["rollout", "plan", "--plan", plan_file]) == cli.OK
    text = capsys.readouterr().out
    assert "track l2" in text and "track l1" in text and "after l2:serve" in text
    rollback = ["rollout", "rollback", "--unleash-url", server.url, "--json", "--plan", plan_file]
    assert cli.main([*rollback, "--track", "l1"]) == cli.OK
    record = json.loads(capsys.readouterr().out)
    assert (record["track"], record["stage"], record["target"]) == ("l1", "l1-10", "shadow")
    assert read_stage(server.url, server.admin_token).stage == "l2"
    assert cli.main(rollback) == cli.OK
    assert json.loads(capsys.readouterr().out)["target"] == "kill-switch"
    assert read_stage(server.url, server.admin_token).kill_switch
