"""Per-layer tracks end to end: the demo follows the real Unleash server, the real Prometheus
scrapes it every second, generated load runs, and the track controller steps the shipped track
plan (`flags/rollout-tracks.toml`) on a compressed schedule.

Asserted are decisions, never durations: healthy load takes both tracks to their last state,
L1 serving only after L2 serves; injected staleness on L1 (`serve --stale-writes`) rolls the L1
track back on "agreement below bound" while the L2 track keeps serving.
"""

from __future__ import annotations

import time
import tomllib
from collections.abc import Callable
from typing import Any

import pytest
from support.redis_server import RedisServer
from support.unleash_server import UnleashServer, unleash_server  # noqa: F401
from test_autopilot_e2e import JOB, STEP_BUDGET, Load, prometheus_bin, rig  # noqa: F401

from cachegate.autopilot.controller import Action, Decision
from cachegate.autopilot.layers import UnleashLayers
from cachegate.autopilot.plan import Plan, default_plan_path, parse_plan
from cachegate.autopilot.prometheus import PrometheusReader
from cachegate.autopilot.tracks import TrackController
from cachegate.flags import read_stage

pytestmark = pytest.mark.slow

Step = tuple[Decision, ...]


def compressed_track_plan() -> Plan:
    """The shipped track plan with seconds for hours and smaller samples (as the stage e2e)."""
    path = default_plan_path({}).parent / "rollout-tracks.toml"
    data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    data.update(selector=f'job="{JOB}"', settle="2s", interval="0.5s")
    for track in data["tracks"]:
        for state in track["states"]:
            state["min_observation"] = "3s"
    for name, gate in data["gates"].items():
        gate["window"] = "30s"
        if "min_sample" in gate:
            gate["min_sample"] = 30
        if gate["kind"] == "agreement":
            gate["max_excess"] = 0.15
        if name in ("store-failures", "store-bypass-share"):
            gate["max"] = 0.10
        if name == "latency-p95":
            gate["max_increase"] = 1.0
    return parse_plan(data, source="compressed tracks", environ={})


def controller(server: UnleashServer, prometheus_url: str) -> TrackController:
    plan = compressed_track_plan()
    layers = UnleashLayers(server.url, server.admin_token, plan)
    return TrackController(plan, PrometheusReader(prometheus_url), layers)


def drive(tracks: TrackController, done: Callable[[Step], bool]) -> list[Step]:
    steps: list[Step] = []
    deadline = time.monotonic() + STEP_BUDGET
    while time.monotonic() < deadline:
        steps.append(tracks.step())
        if done(steps[-1]):
            break
        time.sleep(tracks.plan.interval)
    return steps


def moves(steps: list[Step]) -> list[tuple[str | None, str | None, Action, str | None]]:
    return [(d.track, d.stage, d.action, d.target) for step in steps for d in step if d.applied]


def test_healthy_tracks_reach_their_last_states_l1_serving_after_l2(
    unleash_server: UnleashServer,  # noqa: F811
    prometheus_bin: str,  # noqa: F811
    spawned_redis: RedisServer,
) -> None:
    with (
        rig(unleash_server, prometheus_bin, "off", spawned_redis) as setup,
        Load(setup.url, setup.catalog, write_ratio=0.05).running() as load,
    ):
        tracks = controller(setup.server, setup.prometheus.url)
        steps = drive(tracks, lambda step: all(d.action is Action.COMPLETE for d in step))
        assert not load.errors, load.errors[:3]
    assert all(d.action is Action.COMPLETE for d in steps[-1]), moves(steps)
    done = moves(steps)
    assert [m for m in done if m[0] == "l2"] == [
        ("l2", "off", Action.ADVANCE, "shadow"),
        ("l2", "shadow", Action.ADVANCE, "serve"),
    ]
    assert [m for m in done if m[0] == "l1"] == [
        ("l1", "off", Action.ADVANCE, "shadow"),
        ("l1", "shadow", Action.ADVANCE, "l1-10"),
        ("l1", "l1-10", Action.ADVANCE, "l1-50"),
        ("l1", "l1-50", Action.ADVANCE, "l1-100"),
    ]
    # L1 entered l1-10 only after L2 had moved to serve, never in the same step.
    l2_serve = next(i for i, m in enumerate(done) if m[3] == "serve")
    l1_10 = next(i for i, m in enumerate(done) if m[3] == "l1-10")
    assert l2_serve < l1_10
    assert read_stage(setup.server.url, setup.server.admin_token).stage == "l1-100"


def test_stale_l1_rolls_back_the_l1_track_while_l2_keeps_serving(
    unleash_server: UnleashServer,  # noqa: F811
    prometheus_bin: str,  # noqa: F811
    spawned_redis: RedisServer,
) -> None:
    with (
        rig(
            unleash_server, prometheus_bin, "l1-50", spawned_redis, stale_writes=1.0, workspaces=20
        ) as setup,
        Load(setup.url, setup.catalog, write_ratio=0.3).running() as load,
    ):
        started = time.time()
        tracks = controller(setup.server, setup.prometheus.url)
        steps = drive(tracks, lambda step: any(d.action is Action.ROLLBACK for d in step))
        rolled_back = time.time()
        time.sleep(6.0)  # load under the state rolled back to (clients poll every second)
        after = load.hit_share(rolled_back + 3.0, time.time())
        before = load.hit_share(started, rolled_back)
        final = UnleashLayers(setup.server.url, setup.server.admin_token, tracks.plan).read()
    last = {d.track: d for d in steps[-1]}
    assert last["l1"].action is Action.ROLLBACK and last["l1"].applied, moves(steps)
    assert last["l1"].stage in ("l1-50", "l1-100") and last["l1"].target == "shadow"
    assert last["l1"].reason.startswith("l1-agreement: agreement below bound"), last["l1"].reason
    # The L2 track never moved back: it serves throughout, judged by its own gates.
    l2 = [d for step in steps for d in step if d.track == "l2"]
    assert all(d.stage == "serve" and d.action is not Action.ROLLBACK for d in l2)
    assert {name: view.state for name, view in final.tracks.items()} == {
        "l2": "serve",
        "l1": "shadow",
    }
    assert read_stage(setup.server.url, setup.server.admin_token).stage == "l2"
    assert after < before, (before, after)
