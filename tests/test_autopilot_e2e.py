"""The autopilot end to end: the demo service follows the real Unleash server, the real Prometheus
scrapes it every second, generated load runs, and the controller steps on a compressed schedule
(the shipped plan's gates and queries, with seconds instead of hours and smaller samples).

Asserted are decisions, never durations: healthy load goes from `off` to `l1-100` by itself;
injected staleness rolls back with "agreement below bound" and fewer hits are served; a failing
store rolls back on a store gate; no Prometheus or no traffic holds and says so.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from support.components import missing
from support.prometheus import Prometheus, prometheus_binary, running_prometheus, serving
from support.redis_server import RedisServer, free_port
from support.unleash_server import UnleashServer, unleash_server  # noqa: F401

from cachegate.autopilot.controller import Action, Controller, Decision
from cachegate.autopilot.plan import Plan, default_plan_path, parse_plan
from cachegate.autopilot.prometheus import PrometheusReader
from cachegate.autopilot.unleash import UnleashStages
from cachegate.demo.service import DemoConfig, build_demo
from cachegate.demo.workload import Catalog
from cachegate.flags import apply_stage

pytestmark = pytest.mark.slow

JOB = "autopilot-e2e"
QUESTIONS = ("How is the client sleeping?", "Any progress on anxiety?", "What about family?")
STEP_BUDGET = 150.0
"""Seconds a scenario may take at most; a scenario ends as soon as its decision is made."""


def compressed_plan() -> Plan:
    """The shipped plan with seconds for hours, small samples and wider agreement limits (a
    few hundred comparisons cannot bound a mismatch rate below 1 %)."""
    data: dict[str, Any] = tomllib.loads(default_plan_path({}).read_text(encoding="utf-8"))
    data.update(selector=f'job="{JOB}"', settle="2s", interval="0.5s")
    for stage in data["stages"]:
        stage["min_observation"] = "3s"
    for name, gate in data["gates"].items():
        gate["window"] = "30s"
        if "min_sample" in gate:
            gate["min_sample"] = 30
        if gate["kind"] == "agreement":
            gate["max_excess"] = 0.15
        if name in ("store-failures", "store-bypass-share"):
            gate["max"] = 0.10
        if name == "latency-p95":
            gate["max_increase"] = 1.0  # p95 of a few hundred requests is noisy
    return parse_plan(data, source="compressed", environ={})


@dataclass
class Load:
    """Queries and session writes from two threads; counts the X-CacheGate answers."""

    url: str
    catalog: Catalog
    write_ratio: float
    paths: list[tuple[float, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self, seed: int) -> None:
        rng = random.Random(seed)
        workspaces, clients = self.catalog.workspace_ids(), self.catalog.client_ids()
        sessions: dict[tuple[str, str], str] = {}
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self._stop.is_set():
                workspace, client_id = rng.choice(workspaces), rng.choice(clients)
                headers = {"X-Workspace-ID": workspace}
                try:
                    if rng.random() < self.write_ratio:
                        response = self.write(client, headers, sessions, (workspace, client_id))
                    else:
                        body = {"query": rng.choice(QUESTIONS), "client_id": client_id}
                        response = client.post("/ai/query", json=body, headers=headers)
                        self.paths.append((time.time(), response.headers.get("x-cachegate", "")))
                except httpx.HTTPError as error:
                    self.errors.append(repr(error))
                    time.sleep(0.05)
                    continue
                if response.status_code >= 500:
                    self.errors.append(f"HTTP {response.status_code}")

    @staticmethod
    def write(
        client: httpx.Client,
        headers: dict[str, str],
        sessions: dict[tuple[str, str], str],
        owner: tuple[str, str],
    ) -> httpx.Response:
        """Rewrite the client's one session note (created first): it is always retrieved,
        so every write changes that client's answers."""
        note = f"Sleep, anxiety and family: session {random.random():.6f}."
        session = sessions.get(owner)
        if session is None:
            body = {"client_id": owner[1], "notes": note}
            response = client.post("/sessions", json=body, headers=headers)
            if response.status_code == 201:
                sessions[owner] = response.json()["session_id"]
            return response
        return client.put(f"/sessions/{session}", json={"notes": note}, headers=headers)

    @contextmanager
    def running(self) -> Iterator[Load]:
        threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(2)]
        for thread in threads:
            thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            for thread in threads:
                thread.join(timeout=15)

    def hit_share(self, start: float, end: float) -> float:
        paths = [path for at, path in list(self.paths) if start <= at < end]
        return sum(path == "hit" for path in paths) / max(len(paths), 1)


@dataclass
class Rig:
    server: UnleashServer
    url: str
    prometheus: Prometheus
    stages: UnleashStages
    catalog: Catalog

    def controller(self, prometheus_url: str | None = None) -> Controller:
        reader = PrometheusReader(prometheus_url or self.prometheus.url)
        return Controller(compressed_plan(), reader, self.stages)


@pytest.fixture
def prometheus_bin() -> str:
    binary = prometheus_binary()
    if binary is None:
        missing("prometheus (Debian package `prometheus`)")
    assert binary is not None
    return binary


@contextmanager
def rig(
    server: UnleashServer,
    prometheus_bin: str,
    stage: str,
    redis: RedisServer,
    *,
    stale_writes: float = 0.0,
    workspaces: int = 4,
) -> Iterator[Rig]:
    """Unleash at `stage`, the demo following it (1 s polls) over a private redis-server (the
    store gates judge its operations), Prometheus scraping the demo."""
    apply_stage(server.url, server.admin_token, stage)
    environ = {
        "UNLEASH_URL": server.api_url,
        "UNLEASH_API_TOKEN": server.client_token,
        "UNLEASH_REFRESH_INTERVAL": "1",
        "REDIS_URL": redis.url,
    }
    catalog = Catalog(workspaces=workspaces, clients=2, notes_per_client=0)
    config = DemoConfig(
        stage=stage,
        latency=0.01,
        embed_latency=0.0,
        catalog=catalog,
        stale_writes=stale_writes,
        seed=7,
        noise_sample_rate=0.05,
    )
    demo = build_demo(config, environ=environ, registry=CollectorRegistry())
    with serving(demo.app, cleanup=demo.gate.aclose) as url:
        target = url.removeprefix("http://")
        with running_prometheus(prometheus_bin, job=JOB, targets=[target], rule_files=[]) as prom:
            prom.wait_scraped(JOB)
            stages = UnleashStages(server.url, server.admin_token)
            yield Rig(server, url, prom, stages, catalog)


def drive(controller: Controller, done: Callable[[Decision], bool]) -> list[Decision]:
    """Step every interval until `done` says so or the budget is spent."""
    decisions: list[Decision] = []
    deadline = time.monotonic() + STEP_BUDGET
    while time.monotonic() < deadline:
        decision = controller.step()
        decisions.append(decision)
        if done(decision):
            break
        time.sleep(controller.plan.interval)
    return decisions


def summary(decisions: list[Decision]) -> str:
    moves = [d for d in decisions if d.applied]
    last = decisions[-1] if decisions else None
    return f"moves {[(d.stage, d.target, d.reason) for d in moves]}; last {last}"


def test_healthy_rollout_goes_from_off_to_l1_100_by_itself(
    unleash_server: UnleashServer,  # noqa: F811
    prometheus_bin: str,
    spawned_redis: RedisServer,
) -> None:
    with (
        rig(unleash_server, prometheus_bin, "off", spawned_redis) as setup,
        Load(setup.url, setup.catalog, write_ratio=0.05).running() as load,
    ):
        decisions = drive(setup.controller(), lambda d: d.target == "l1-100" and d.applied)
        assert not load.errors, load.errors[:3]
    moves = [(d.stage, d.action, d.target) for d in decisions if d.applied]
    assert moves == [
        ("off", Action.ADVANCE, "dark-launch"),
        ("dark-launch", Action.ADVANCE, "l2"),
        ("l2", Action.ADVANCE, "l1-10"),
        ("l1-10", Action.ADVANCE, "l1-50"),
        ("l1-50", Action.ADVANCE, "l1-100"),
    ], summary(decisions)
    assert setup.stages.read().stage == "l1-100"
    assert not any(d.action is Action.ROLLBACK for d in decisions)
    # Every advance was made on passing gates, each with its figures.
    for decision in decisions:
        if decision.applied:
            assert decision.gates and all(g.verdict.value == "pass" for g in decision.gates)


def test_injected_staleness_rolls_back_on_agreement(
    unleash_server: UnleashServer,  # noqa: F811
    prometheus_bin: str,
    spawned_redis: RedisServer,
) -> None:
    with (
        rig(
            unleash_server, prometheus_bin, "l1-50", spawned_redis, stale_writes=1.0, workspaces=20
        ) as setup,
        Load(setup.url, setup.catalog, write_ratio=0.3).running() as load,
    ):
        started = time.time()
        decisions = drive(setup.controller(), lambda d: d.action is Action.ROLLBACK)
        rolled_back = time.time()
        time.sleep(6.0)  # load under the stage rolled back to (clients poll every second)
        after = load.hit_share(rolled_back + 3.0, time.time())
        before = load.hit_share(started, rolled_back)
    last = decisions[-1]
    assert last.action is Action.ROLLBACK and last.applied, summary(decisions)
    # The plan sends a failing L1 agreement back to l2: L1 stops serving, L2 keeps serving.
    assert last.target == "l2"
    assert last.reason.startswith("l1-agreement: agreement below bound"), last.reason
    assert setup.stages.read().stage == "l2"
    assert after < before, (before, after)


def test_failing_store_rolls_back_on_the_store_gate(
    unleash_server: UnleashServer,  # noqa: F811
    prometheus_bin: str,
    spawned_redis: RedisServer,
) -> None:
    with (
        rig(unleash_server, prometheus_bin, "dark-launch", spawned_redis) as setup,
        Load(setup.url, setup.catalog, write_ratio=0.05).running(),
    ):
        time.sleep(5.0)  # traffic under dark-launch: the comparison gates' stage before
        apply_stage(setup.server.url, setup.server.admin_token, "l2")
        controller = setup.controller()
        # l2 is watched for an hour here: it cannot advance, so only the store can move it.
        stages = tuple(
            replace(stage, min_observation=3600.0) if stage.name == "l2" else stage
            for stage in controller.plan.stages
        )
        controller.plan = replace(controller.plan, stages=stages)
        first = drive(controller, lambda d: d.code == "observing")
        assert first[-1].code == "observing", summary(first)  # every gate passes on l2
        spawned_redis.stop()
        decisions = drive(controller, lambda d: d.action is Action.ROLLBACK)
    last = decisions[-1]
    assert last.action is Action.ROLLBACK and last.applied, summary(decisions)
    assert last.target == "dark-launch"
    gate = last.reason.split(":")[0]
    store_gates = {"store-failures", "breaker-open", "store-bypass-share", "invalidation-failures"}
    assert gate in store_gates, last.reason


def test_no_prometheus_or_no_traffic_holds_and_says_so(
    unleash_server: UnleashServer,  # noqa: F811
    prometheus_bin: str,
    spawned_redis: RedisServer,
) -> None:
    with rig(unleash_server, prometheus_bin, "off", spawned_redis) as setup:
        unreachable = setup.controller(f"http://127.0.0.1:{free_port()}")
        quiet = setup.controller()
        decisions: list[Decision] = []
        for _ in range(8):
            for controller in (unreachable, quiet):
                # An hour after the stage began: observation time is not what holds it.
                controller.clock = lambda: time.time() + 3600
                decisions.append(controller.step())
            time.sleep(0.5)
    assert all(d.action is Action.HOLD and not d.applied for d in decisions)
    assert {d.code for d in decisions[0::2]} == {"metrics_unavailable"}
    assert all("unreachable" in d.reason for d in decisions[0::2])
    quiet_reasons = {d.reason for d in decisions[1::2]}
    assert all(r.startswith("traffic: ") for r in quiet_reasons), quiet_reasons
    assert all("too little traffic" in r or "no data" in r for r in quiet_reasons)
    assert setup.stages.read().stage == "off"


def test_replay_autopilot_mode_loads_each_stage_the_autopilot_holds(
    unleash_server: UnleashServer,  # noqa: F811
    prometheus_bin: str,
    spawned_redis: RedisServer,
) -> None:
    from cachegate.demo import replay as rp

    with rig(unleash_server, prometheus_bin, "off", spawned_redis) as setup:
        controller = setup.controller()
        decisions: list[Decision] = []

        def step() -> bool:
            decisions.append(controller.step())
            return decisions[-1].action in (Action.COMPLETE, Action.ROLLBACK)

        config = rp.ReplayConfig(
            url=setup.url,
            requests=300,
            duration=4.0,
            concurrency=4,
            catalog=setup.catalog,
        )
        results = asyncio.run(
            rp.replay_autopilot(
                config,
                current=lambda: setup.stages.read().stage,
                step=step,
                rounds=12,
            )
        )
    assert len(results) == len(decisions)
    assert results[0].stage == "off"
    moved = [d for d in decisions if d.applied]
    assert moved and moved[0].target == "dark-launch", summary(decisions)
    # Each round after a move was loaded at the stage the autopilot moved to.
    for index, decision in enumerate(decisions[:-1]):
        if decision.applied:
            assert results[index + 1].stage == decision.target
    table = rp.render_text(results)
    assert "off" in table and "dark-launch" in table


def test_replay_autopilot_needs_prometheus_and_unleash(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from cachegate import cli

    assert cli.main(["replay", "--autopilot", "--quiet"]) == cli.USAGE
    assert "--autopilot needs --prometheus" in capsys.readouterr().err
