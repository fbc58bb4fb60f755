"""CacheGate wires its metrics into the store it is given, through an `EncryptedStore` too."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cachegate import (
    CacheGate,
    CacheGateMiddleware,
    Metrics,
    Policy,
    RedisStore,
    trusted_header,
)
from cachegate.store import MemoryStore
from cachegate.store.encrypted import EncryptedStore

pytestmark = pytest.mark.anyio


def _gate(store: EncryptedStore, namespace: str, registry: CollectorRegistry) -> CacheGate:
    return CacheGate(
        policies=[Policy("/ask", tenant=trusted_header("x-workspace-id"))],
        store=store,
        namespace=namespace,
        metrics=Metrics(registry=registry),
    )


async def _ask(gate: CacheGate) -> str:
    async def ask(request: Request) -> Response:
        return JSONResponse({"answer": 42})

    app = Starlette(routes=[Route("/ask", ask, methods=["POST"])])
    app.add_middleware(CacheGateMiddleware, gate=gate)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.post("/ask", headers={"x-workspace-id": "w"})
    return response.headers["x-cachegate"]


async def test_a_value_under_a_retired_key_is_a_counted_miss(namespace: str) -> None:
    shared = MemoryStore()
    old = EncryptedStore(shared, keys={"k1": b"1" * 32}, active="k1", digest_secret=b"d" * 32)
    assert await _ask(_gate(old, namespace, CollectorRegistry())) == "miss"
    registry = CollectorRegistry()
    rotated = EncryptedStore(shared, keys={"k2": b"2" * 32}, active="k2", digest_secret=b"d" * 32)
    assert await _ask(_gate(rotated, namespace, registry)) == "miss"
    rejected = registry.get_sample_value(
        "cachegate_encrypted_values_rejected_total", {"reason": "unknown_key"}
    )
    assert rejected == 1


async def test_a_wrapped_redis_store_reports_store_metrics(redis_url: str, namespace: str) -> None:
    registry = CollectorRegistry()
    redis_store = RedisStore.from_url(redis_url, deadline=1.0)
    gate = _gate(
        EncryptedStore(redis_store, keys={"k": b"k" * 16}, active="k", digest_secret=b"d" * 32),
        namespace,
        registry,
    )
    try:
        assert await _ask(gate) == "miss"
        assert await _ask(gate) == "hit"
        lookups = registry.get_sample_value(
            "cachegate_store_operation_duration_seconds_count", {"operation": "lookup"}
        )
        assert lookups == 2
    finally:
        await gate.aclose()
        from conftest import delete_namespace

        delete_namespace(redis_url, namespace)


async def test_background_work_cancelled_before_it_ran_is_closed_not_leaked() -> None:
    """aclose cancels background work; work that never started is closed, so no coroutine is
    left 'never awaited' (a RuntimeWarning at shutdown)."""
    import inspect

    gate = CacheGate(policies=[], metrics=Metrics(registry=CollectorRegistry()))
    ran: list[bool] = []

    async def work() -> None:
        ran.append(True)

    pending = work()
    assert gate.background(pending)
    await gate.aclose()
    assert ran == []
    assert inspect.getcoroutinestate(pending) == inspect.CORO_CLOSED
