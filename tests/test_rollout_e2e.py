"""The middleware follows a real Unleash server: stages applied with the admin API, flags toggled
as a person does in the dashboard, and requests behaving accordingly within the refresh interval."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import anyio
import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from support.unleash_server import UnleashServer

from cachegate import (
    CacheGate,
    CacheGateMiddleware,
    Metrics,
    Mode,
    Policy,
    body_field,
    trusted_header,
)
from cachegate.flags import FLAG_KILL_SWITCH, FlagRollout, UnleashFlags, apply_stage, stage_path

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

TENANTS = [f"workspace-{i}" for i in range(200)]


async def eventually(check: Callable[[], bool], what: str, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within} s: {what}")
        await anyio.sleep(0.1)


@dataclass
class Service:
    client: httpx.AsyncClient
    rollout: FlagRollout
    registry: CollectorRegistry
    calls: dict[str, int]

    async def ask(self, tenant: str) -> str:
        response = await self.client.post(
            "/ai/query", json={"query": "progress?"}, headers={"X-Workspace-ID": tenant}
        )
        assert response.status_code == 200
        assert response.json() == {"answer": f"fresh for {tenant}"}
        return response.headers["x-cachegate"]

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def service(unleash_server: UnleashServer) -> AsyncIterator[Service]:
    apply_stage(unleash_server.url, unleash_server.admin_token, "off")
    source = UnleashFlags.connect(unleash_server.settings(), bootstrap=stage_path("off"))
    rollout = FlagRollout(source)
    await rollout.start(wait=10)
    calls: dict[str, int] = {}

    async def ask(request: Request) -> Response:
        tenant = request.headers["x-workspace-id"]
        calls[tenant] = calls.get(tenant, 0) + 1
        return JSONResponse({"answer": f"fresh for {tenant}"})

    registry = CollectorRegistry()
    gate = CacheGate(
        policies=[
            Policy(
                "/ai/query", tenant=trusted_header("X-Workspace-ID"), key={"q": body_field("query")}
            )
        ],
        rollout=rollout,
        metrics=Metrics(registry=registry),
    )
    app = Starlette(routes=[Route("/ai/query", ask, methods=["POST"])])
    app.add_middleware(CacheGateMiddleware, gate=gate)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        yield Service(client, rollout, registry, calls)
    await rollout.aclose()
    await gate.aclose()


async def test_stages_and_dashboard_toggles_drive_the_middleware(
    service: Service, unleash_server: UnleashServer
) -> None:
    server = unleash_server
    apply_stage(server.url, server.admin_token, "dark-launch")
    await eventually(
        lambda: all(service.rollout.decide(t).l1 is Mode.SHADOW for t in TENANTS), "dark launch"
    )
    tenants = TENANTS[:40]
    first = [await service.ask(t) for t in tenants]
    second = [await service.ask(t) for t in tenants]
    assert set(first) == {"shadow-miss"} and set(second) == {"shadow-hit"}
    assert all(service.calls[t] == 2 for t in tenants), "dark launch must serve fresh"
    assert (
        service.metric("cachegate_shadow_lookups_total", cache_layer="query_result", result="hit")
        == 40
    )
    agreement = {"cache_layer": "query_result", "kind": "shadow", "outcome": "match"}
    assert service.metric("cachegate_comparisons_total", **agreement) == 40

    apply_stage(server.url, server.admin_token, "l1-10")
    await eventually(
        lambda: any(service.rollout.decide(t).l1 is Mode.SERVE for t in TENANTS), "L1 at 10 %"
    )
    await eventually(lambda: service.rollout.source.snapshot.settled, "new flag state settles")
    serving = {t for t in TENANTS if service.rollout.decide(t).l1 is Mode.SERVE}
    assert 0.03 <= len(serving) / len(TENANTS) <= 0.2, len(serving)
    for tenant in TENANTS:
        await service.ask(tenant)
    served_cached = {t for t in TENANTS if await service.ask(t) == "hit"}
    assert served_cached == serving

    server.switch(FLAG_KILL_SWITCH, on=True)
    await eventually(
        lambda: all(service.rollout.decide(t).l1 is Mode.OFF for t in TENANTS), "kill switch"
    )
    assert {await service.ask(t) for t in serving} == {"bypass"}

    server.stop()
    try:
        await anyio.sleep(2.5)
        assert {await service.ask(t) for t in serving} == {"bypass"}, "last state must hold"
    finally:
        server.start()
    server.switch(FLAG_KILL_SWITCH, on=False)
    await eventually(
        lambda: {t for t in TENANTS if service.rollout.decide(t).l1 is Mode.SERVE} == serving,
        "changes picked up again after a restart",
        within=30.0,
    )
    assert {await service.ask(t) for t in serving} == {"hit"}
