"""A write during a shadow comparison's fresh run is not a staleness signal; a changed answer
without a write is."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from support.stores import metrics_for

from cachegate import (
    CacheGate,
    CacheGateMiddleware,
    Decision,
    Mode,
    Policy,
    StaticRollout,
    body_field,
    trusted_header,
)
from cachegate.store import Store

pytestmark = pytest.mark.anyio


async def _run(store: Store, namespace: str, *, write_during_second: bool) -> CollectorRegistry:
    metrics = metrics_for(store)
    registry = metrics.registry
    assert registry is not None
    gate = CacheGate(
        policies=[
            Policy(
                "/ask",
                tenant=trusted_header("x-workspace-id"),
                subject=body_field("client"),
                key={"q": body_field("q")},
            )
        ],
        store=store,
        namespace=namespace,
        rollout=StaticRollout(Decision(l1=Mode.SHADOW)),
        metrics=metrics,
    )
    state = {"notes": "v1"}

    async def ask(request: Request) -> Response:
        await request.body()
        answer = state["notes"]
        if write_during_second and answer == "v1" and state.get("calls"):
            state["notes"] = "v2"
            await gate.invalidate("w1", "c1", reason="write")
            answer = "v2"
        state["calls"] = "1"
        await asyncio.sleep(0.01)
        return JSONResponse({"answer": answer})

    app = Starlette(routes=[Route("/ask", ask, methods=["POST"])])
    app.add_middleware(CacheGateMiddleware, gate=gate)
    transport = httpx.ASGITransport(app=app)
    request = {"json": {"q": "q", "client": "c1"}, "headers": {"x-workspace-id": "w1"}}
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.post("/ask", **request)).headers["x-cachegate"] == "shadow-miss"
        if not write_during_second:
            state["notes"] = "v2"
        second = await client.post("/ask", **request)
    assert second.headers["x-cachegate"] == "shadow-hit"
    assert second.json() == {"answer": "v2"}
    return registry


def _ignored(registry: CollectorRegistry) -> float | None:
    labels = {"cache_layer": "query_result", "kind": "shadow"}
    return registry.get_sample_value("cachegate_comparisons_ignored_total", labels)


def _mismatches(registry: CollectorRegistry) -> float | None:
    labels = {"cache_layer": "query_result", "kind": "shadow", "outcome": "mismatch"}
    return registry.get_sample_value("cachegate_comparisons_total", labels)


async def test_a_write_during_the_fresh_run_is_not_counted_as_a_mismatch(
    store: Store, namespace: str
) -> None:
    registry = await _run(store, namespace, write_during_second=True)
    assert _mismatches(registry) == 0
    assert _ignored(registry) == 1


async def test_a_changed_answer_without_a_write_is_a_mismatch(store: Store, namespace: str) -> None:
    registry = await _run(store, namespace, write_during_second=False)
    assert _mismatches(registry) == 1
    assert _ignored(registry) == 0
