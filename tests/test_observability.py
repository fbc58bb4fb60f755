"""Metrics names and labels, and spans around each step, without tenant data in either."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from support.spans import recording_spans

from cachegate import (
    CacheGate,
    CacheGateMiddleware,
    Decision,
    Metrics,
    Mode,
    Policy,
    StaticRollout,
    WriteRule,
    body_field,
    trusted_header,
)

pytestmark = pytest.mark.anyio

TENANT = "tenant-7f3a-secret"
QUESTION = "what did the patient say about insomnia"
ANSWER = "the answer mentions nightmares"

_EXPORTER = recording_spans()


def _app(gate: CacheGate) -> Starlette:
    async def ask(request: Request) -> Response:
        await request.body()
        return JSONResponse({"answer": ANSWER})

    async def write(request: Request) -> Response:
        return JSONResponse({"ok": True})

    app = Starlette(
        routes=[
            Route("/ai/query", ask, methods=["POST"]),
            Route("/sessions", write, methods=["POST"]),
        ]
    )
    app.add_middleware(CacheGateMiddleware, gate=gate)
    return app


def _gate(registry: CollectorRegistry, mode: Mode, *, verify: bool = False) -> CacheGate:
    return CacheGate(
        policies=[
            Policy(
                "/ai/query",
                tenant=trusted_header("x-workspace-id"),
                subject=body_field("client_id"),
                key={"query": body_field("query")},
                rerun_safe=True,
            )
        ],
        write_rules=[
            WriteRule(
                "/sessions",
                tenant=trusted_header("x-workspace-id"),
                subject=body_field("client_id"),
            )
        ],
        rollout=StaticRollout(Decision(l1=mode, l2=mode, verify=verify)),
        metrics=Metrics(registry=registry),
    )


async def _exercise(gate: CacheGate) -> None:
    transport = httpx.ASGITransport(app=_app(gate))
    headers = {"x-workspace-id": TENANT}
    body = {"query": QUESTION, "client_id": "client-secret-42"}
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for _ in range(2):
            await client.post("/ai/query", json=body, headers=headers)
        await client.post("/sessions", json=body, headers=headers)
    await gate.drain()


async def test_spans_cover_each_step_without_tenant_data() -> None:
    _EXPORTER.clear()
    await _exercise(_gate(CollectorRegistry(), Mode.SERVE, verify=True))
    await _exercise(_gate(CollectorRegistry(), Mode.SHADOW))
    spans = _EXPORTER.get_finished_spans()
    names = {span.name for span in spans}
    assert {
        "cachegate.lookup",
        "cachegate.fresh",
        "cachegate.store_write",
        "cachegate.compare",
        "cachegate.invalidate",
    } <= names
    lookups = [s for s in spans if s.name == "cachegate.lookup"]
    assert {s.attributes["cachegate.mode"] for s in lookups} == {"serve", "shadow"}
    assert {s.attributes["cachegate.outcome"] for s in lookups} >= {"hit", "miss"}
    assert all(s.attributes["http.route"] == "/ai/query" for s in lookups)
    text = repr([dict(span.attributes or {}) for span in spans])
    for secret in (TENANT, QUESTION, ANSWER, "client-secret-42"):
        assert secret not in text


async def test_metrics_have_no_tenant_data_and_start_at_zero() -> None:
    registry = CollectorRegistry()
    gate = _gate(registry, Mode.SERVE)
    exposition = generate_latest(registry).decode()
    assert 'cachegate_cache_hits_total{cache_layer="query_result"} 0.0' in exposition
    assert 'cachegate_bypasses_total{reason="no_tenant"} 0.0' in exposition
    await _exercise(gate)
    exposition = generate_latest(registry).decode()
    assert 'cachegate_cache_hits_total{cache_layer="query_result"} 1.0' in exposition
    assert 'cachegate_cache_invalidations_total{reason="write"} 1.0' in exposition
    for layer in ("query_result", "embedding"):
        labels = {"cache_layer": layer, "mode": "serve"}
        assert registry.get_sample_value("cachegate_decisions_total", labels) == 2
    for secret in (TENANT, QUESTION, ANSWER, "client-secret-42"):
        assert secret not in exposition


def test_namespace_keeps_the_original_metric_names() -> None:
    registry = CollectorRegistry()
    Metrics(namespace="ai_agent", registry=registry)
    value = registry.get_sample_value("ai_agent_cache_hits_total", {"cache_layer": "query_result"})
    assert value == 0.0
    assert (
        registry.get_sample_value("cachegate_cache_hits_total", {"cache_layer": "embedding"})
        is None
    )
