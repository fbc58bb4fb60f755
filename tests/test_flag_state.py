"""The flag state against a real Unleash 7.5.1 (issue 16): it survives a restart while Unleash is
down, says where it came from and how old it is, cannot be made non-sticky from the dashboard
without a word, and an outage is one warning each way with a counter in between.

The demo service is built as `cachegate serve` builds it, with `UNLEASH_URL` and a flag state
file in the test's directory; requests go through its ASGI app. Waits poll with a deadline.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import pytest
from conftest import missing
from prometheus_client import CollectorRegistry
from support.prometheus import prometheus_binary, running_prometheus, serving
from support.unleash_server import UnleashServer, unleash_server  # noqa: F401

from cachegate.demo.replay import ReplayError, Samples, UnleashSwitcher
from cachegate.demo.service import Demo, DemoConfig, build_demo
from cachegate.demo.workload import QUESTIONS, Catalog
from cachegate.flags import (
    FLAG_KILL_SWITCH,
    FLAG_L1_SERVE,
    STICKINESS_FIELD,
    apply_stage,
    show_flags,
)
from cachegate.rollout import Mode

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

SMALL = Catalog(workspaces=20, clients=2, notes_per_client=2)
FAST = {"latency": 0.0, "embed_latency": 0.0, "noise_sample_rate": 0.0}
WORKSPACES = [f"ws-{i:03d}" for i in range(1, 21)]


async def eventually(check: Callable[[], bool], what: str, within: float = 20.0) -> None:
    """Poll `check` until it holds; fail with `what` after `within` seconds."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within} s: {what}")
        await anyio.sleep(0.1)


def environ(server: UnleashServer, state: Path) -> dict[str, str]:
    return {
        "UNLEASH_URL": server.api_url,
        "UNLEASH_API_TOKEN": server.client_token,
        "UNLEASH_ENVIRONMENT": server.environment,
        "UNLEASH_REFRESH_INTERVAL": "1",
        "CACHEGATE_FLAG_STATE_FILE": str(state),
    }


@asynccontextmanager
async def running(
    server: UnleashServer, state: Path, stage: str | None
) -> AsyncIterator[tuple[Demo, httpx.AsyncClient]]:
    """The demo as `cachegate serve [--stage STAGE]` builds it with `UNLEASH_URL`, started."""
    demo = build_demo(
        DemoConfig(stage=stage, catalog=SMALL, **FAST),  # type: ignore[arg-type]
        environ=environ(server, state),
        registry=CollectorRegistry(),
    )
    await demo.stages.start()
    transport = httpx.ASGITransport(app=demo.app, client=("127.0.0.1", 5000))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
            yield demo, client
    finally:
        await demo.stages.aclose()
        await demo.gate.aclose()


async def paths(client: httpx.AsyncClient, workspace: str = "ws-001", times: int = 5) -> list[str]:
    """The `X-CacheGate` path of `times` identical questions."""
    body = {"query": QUESTIONS[0], "client_id": "client-01"}
    headers = {"X-Workspace-ID": workspace}
    return [
        (await client.post("/ai/query", json=body, headers=headers)).headers["x-cachegate"]
        for _ in range(times)
    ]


async def scrape(client: httpx.AsyncClient) -> Samples:
    return Samples.parse((await client.get("/metrics")).text)


def flag_source(samples: Samples) -> str:
    (source,) = [
        dict(labels)["source"]
        for (name, labels), value in samples.values.items()
        if name == "cachegate_flag_state_source" and value == 1
    ]
    return source


def _saved_kill_switch(state: Path) -> bool:
    """Whether the persisted flag state has the kill switch on."""
    try:
        payload = json.loads(json.loads(state.read_text())["payload"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return any(
        feature.get("name") == FLAG_KILL_SWITCH and feature.get("enabled")
        for feature in payload.get("features", [])
    )


async def test_a_restart_while_unleash_is_down_keeps_the_kill_switch(
    unleash_server: UnleashServer,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, state = unleash_server, tmp_path / "flags.json"
    apply_stage(server.url, server.admin_token, "l1-100")
    server.switch(FLAG_KILL_SWITCH, on=True)
    try:
        async with running(server, state, "l1-100") as (demo, client):
            tracker = demo.stages.source.tracker
            # Unleash's client API follows an admin change after its own cache refresh, so the
            # first live state may still be the one before the switch: wait for the switch.
            await eventually(
                lambda: (
                    tracker.source == "live"
                    and _saved_kill_switch(state)
                    and demo.gate.rollout.decide("ws-001").l1 is Mode.OFF
                ),
                "live with the kill switch, saved",
            )
            assert await paths(client) == ["bypass"] * 5
            assert flag_source(await scrape(client)) == "live"
        server.stop()

        caplog.set_level(logging.INFO)
        async with running(server, state, "l1-100") as (demo, client):
            tracker = demo.stages.source.tracker
            assert await paths(client) == ["bypass"] * 5, "the kill switch must hold"
            report = (await client.get("/_demo/stage")).json()
            assert report["flags"]["source"] == "persisted"
            assert report["flags"]["age_seconds"] is not None
            assert report["stage"] is None, "kill switch on: not stage l1-100"
            assert f"{FLAG_KILL_SWITCH}: on (stage: off)" in report["flags"]["differences"]
            samples = await scrape(client)
            assert flag_source(samples) == "persisted"
            fetched = samples.total("cachegate_flag_state_fetched_timestamp_seconds")
            assert 0 < fetched <= time.time()
            started = [r for r in caplog.records if "flag state: persisted" in r.getMessage()]
            assert len(started) == 1 and started[0].levelno == logging.WARNING

            await eventually(lambda: tracker.failed_polls >= 3, "three failed polls")
            assert await paths(client) == ["bypass"] * 5
            server.start()
            await eventually(lambda: tracker.source == "live", "live again")
            server.switch(FLAG_KILL_SWITCH, on=False)
            # The stage is read from the fetched payload, which the SDK's engine loads a moment
            # later: wait for the decision as well, or the first requests still bypass.
            await eventually(
                lambda: (
                    demo.stages.stage == "l1-100"
                    and demo.gate.rollout.decide("ws-001").l1 is Mode.SERVE
                ),
                "kill switch released",
            )
            assert await paths(client) == ["miss"] + ["hit"] * 4
    finally:
        server.start()
        server.switch(FLAG_KILL_SWITCH, on=False)


async def test_without_a_persisted_state_or_a_chosen_stage_the_start_is_off(
    unleash_server: UnleashServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    server = unleash_server
    apply_stage(server.url, server.admin_token, "l1-100")
    server.stop()
    try:
        async with running(server, tmp_path / "none.json", None) as (_, client):
            assert await paths(client) == ["bypass"] * 5
            report = (await client.get("/_demo/stage")).json()
            assert report["flags"]["source"] == "bootstrap"
            assert report["flags"]["age_seconds"] is None
            assert flag_source(await scrape(client)) == "bootstrap"
            assert (await scrape(client)).total(
                "cachegate_flag_state_fetched_timestamp_seconds"
            ) == 0
    finally:
        server.start()


async def test_an_outage_is_one_warning_each_way_and_a_counter_between(
    unleash_server: UnleashServer,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = unleash_server
    apply_stage(server.url, server.admin_token, "dark-launch")
    caplog.set_level(logging.DEBUG)
    async with running(server, tmp_path / "flags.json", None) as (demo, client):
        tracker = demo.stages.source.tracker
        await eventually(lambda: tracker.source == "live", "live")
        caplog.clear()
        server.stop()
        try:
            await eventually(lambda: tracker.failed_polls >= 5, "five failed polls", within=40)
            failures = (await scrape(client)).total("cachegate_flag_fetch_failures_total")
            assert failures >= 5
        finally:
            server.start()
        await eventually(lambda: tracker.source == "live" and not tracker.lost, "answers again")
        loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(loud) == 2, loud
        assert loud[0].startswith("Unleash does not answer")
        assert loud[1].startswith("Unleash answers again after")
        assert not [r for r in caplog.records if r.exc_info], "no tracebacks"


async def test_a_strategy_not_sticky_on_the_tenant_is_detected_and_decided_as_if_it_were(
    unleash_server: UnleashServer,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = unleash_server
    apply_stage(server.url, server.admin_token, "l1-50")
    set_stickiness(server, FLAG_L1_SERVE, "default")
    caplog.set_level(logging.INFO)
    try:
        async with running(server, tmp_path / "flags.json", None) as (demo, client):
            tracker = demo.stages.source.tracker
            await eventually(
                lambda: tracker.overrides == {FLAG_L1_SERVE: 1}, "the edit reaches the client"
            )
            samples = await scrape(client)
            overridden = samples.total("cachegate_flag_stickiness_overrides", flag=FLAG_L1_SERVE)
            assert overridden == 1
            assert [r for r in caplog.records if "not sticky on the tenant" in r.getMessage()]
            for workspace in WORKSPACES:
                seen = {
                    path
                    for path in await paths(client, workspace, times=6)
                    if path not in ("miss", "shadow-miss")
                }
                assert len(seen) <= 1, f"{workspace} flips between {seen}"
            report = (await client.get("/_demo/stage")).json()["flags"]
            assert report["nearest_stage"] == "l1-50"
            (line,) = report["differences"]
            assert line.startswith(f"{FLAG_L1_SERVE}: stickiness default (stage: workspaceId)")
            assert "not sticky on the tenant" in line and "decided as if it were" in line
    finally:
        set_stickiness(server, FLAG_L1_SERVE, STICKINESS_FIELD)


def test_flags_show_names_every_flag_that_differs_from_the_nearest_stage_and_why(
    unleash_server: UnleashServer,  # noqa: F811
) -> None:
    server = unleash_server
    apply_stage(server.url, server.admin_token, "l1-50")
    set_stickiness(server, FLAG_L1_SERVE, "default")
    server.switch(FLAG_KILL_SWITCH, on=True)
    try:
        table = show_flags(server.url, server.admin_token)
    finally:
        set_stickiness(server, FLAG_L1_SERVE, STICKINESS_FIELD)
        server.switch(FLAG_KILL_SWITCH, on=False)
    assert "development: nearest stage l1-50; differs in:" in table
    block = table.split("development: nearest stage l1-50; differs in:\n")[1].splitlines()
    differing = list(itertools.takewhile(lambda line: line.startswith("  "), block))
    assert [line.strip() for line in differing] == [
        f"{FLAG_KILL_SWITCH}: on (stage: off)",
        f"{FLAG_L1_SERVE}: stickiness default (stage: workspaceId); not sticky on the tenant "
        "(stickiness 'default', not 'workspaceId'): decided as if it were",
    ]
    assert "development: stage l1-50" in show_flags(server.url, server.admin_token)


async def test_replay_waits_until_the_service_reports_the_stage_or_fails_clearly(
    unleash_server: UnleashServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    """`cachegate replay --unleash-url` moves the flags and then waits for the service's own
    report (issue 16, item 9), not a fixed time; a service that does not follow is an error."""
    server = unleash_server
    apply_stage(server.url, server.admin_token, "off")
    applied: list[str] = []

    def apply(stage: str, environment: str = server.environment) -> None:
        applied.append(stage)
        apply_stage(server.url, server.admin_token, stage, environment=environment)

    async with running(server, tmp_path / "flags.json", None) as (demo, client):
        await eventually(lambda: demo.stages.source.tracker.source == "live", "live")
        switcher = UnleashSwitcher(apply, client, timeout=30, poll=0.1)
        await switcher.switch("l1-50")
        report = (await client.get("/_demo/stage")).json()
        assert (report["stage"], report["flags"]["source"]) == ("l1-50", "live")
        assert demo.stages.rollout.decide("ws-001") == demo.stages.rollout.decide("ws-001")

        elsewhere = UnleashSwitcher(
            lambda stage: apply(stage, "production"), client, timeout=2, poll=0.1
        )
        with pytest.raises(ReplayError) as failed:
            await elsewhere.switch("l1-100")
        message = str(failed.value)
        assert "did not follow stage 'l1-100' within 2 s" in message
        assert "reports stage 'l1-50' from live flags" in message
    assert applied == ["l1-50", "l1-100"]
    apply_stage(server.url, server.admin_token, "off", environment="production")


RULES = Path(__file__).resolve().parents[1] / "alerts" / "cachegate.rules.yml"
FLAG_PANELS = (
    'sum by (source) (cachegate_flag_state_source{job=~".+"})',
    'cachegate:flag_state_age_seconds{job=~".+"}',
    'sum by (job) (rate(cachegate_flag_fetch_failures_total{job=~".+"}[1m]))',
)


def test_prometheus_sees_the_source_the_age_and_the_outage(
    unleash_server: UnleashServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The flag panels' queries and the age rule against a real Prometheus scraping a demo
    connected to the real Unleash; the age grows while Unleash is stopped."""
    binary = prometheus_binary()
    if binary is None:
        missing("prometheus (Debian package `prometheus`)")
    assert binary is not None
    server = unleash_server
    apply_stage(server.url, server.admin_token, "dark-launch")
    registry = CollectorRegistry()
    demo = build_demo(
        DemoConfig(catalog=SMALL, **FAST),  # type: ignore[arg-type]
        environ=environ(server, tmp_path / "flags.json"),
        registry=registry,
    )
    tracker = demo.stages.source.tracker

    def until(check: Callable[[], bool], what: str, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while not check():
            if time.monotonic() > deadline:
                pytest.fail(f"not within {within} s: {what}")
            time.sleep(0.2)

    with (
        serving(demo.app, cleanup=demo.gate.aclose) as url,
        running_prometheus(
            binary, job="demo", targets=[url.removeprefix("http://")], rule_files=[RULES]
        ) as prometheus,
    ):
        until(lambda: tracker.source == "live", "live")
        source = 'cachegate_flag_state_source{source="live"}'
        until(lambda: 1.0 in prometheus.values(source).values(), "scraped live")
        until(lambda: all(prometheus.query(q) for q in FLAG_PANELS), "every flag panel has data")
        server.stop()
        try:
            age = "cachegate:flag_state_age_seconds"
            until(lambda: max(prometheus.values(age).values(), default=0) > 10, "the age grows", 60)
            failures = "cachegate_flag_fetch_failures_total"
            until(lambda: sum(prometheus.values(failures).values()) >= 3, "failed polls counted")
        finally:
            server.start()
        until(lambda: max(prometheus.values(age).values(), default=99) < 10, "fresh again", 60)


def set_stickiness(server: UnleashServer, flag: str, stickiness: str) -> None:
    """Edit the stickiness of `flag`'s first strategy, as the dashboard's form does."""
    path = f"/projects/{server.project}/features/{flag}/environments/{server.environment}"
    with server.admin() as admin:
        strategy = admin.get(path).raise_for_status().json()["strategies"][0]
        body = {
            "name": strategy["name"],
            "constraints": strategy["constraints"],
            "parameters": {**strategy["parameters"], "stickiness": stickiness},
            "variants": strategy.get("variants", []),
            "segments": strategy.get("segments", []),
            "disabled": False,
        }
        admin.put(f"{path}/strategies/{strategy['id']}", json=body).raise_for_status()
