"""One telemetry path: a store counts into the metrics it was built with, a gate, a wrapping
`EncryptedStore` and an embedder over it count there too, and other metrics are refused."""

from __future__ import annotations

import socket

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
from cachegate.breaker import BreakerState, CircuitBreaker
from cachegate.demo.embedder import LocalEmbedder
from cachegate.embeddings import CachedEmbedder
from cachegate.metrics import default_metrics
from cachegate.store import MemoryStore, StoreError
from cachegate.store.encrypted import EncryptedStore

pytestmark = pytest.mark.anyio


KEYS = {"k": b"k" * 16}


def _gate(store: EncryptedStore, namespace: str) -> CacheGate:
    """A gate over `store`, given no metrics: it counts into the store's."""
    return CacheGate(
        policies=[Policy("/ask", tenant=trusted_header("x-workspace-id"))],
        store=store,
        namespace=namespace,
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


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_a_value_under_a_retired_key_is_a_counted_miss(namespace: str) -> None:
    shared = MemoryStore()
    old = EncryptedStore(
        shared,
        keys={"k1": b"1" * 32},
        active="k1",
        digest_secret=b"d" * 32,
        metrics=Metrics(registry=CollectorRegistry()),
    )
    assert await _ask(_gate(old, namespace)) == "miss"
    registry = CollectorRegistry()
    rotated = EncryptedStore(
        shared,
        keys={"k2": b"2" * 32},
        active="k2",
        digest_secret=b"d" * 32,
        metrics=Metrics(registry=registry),
    )
    gate = _gate(rotated, namespace)
    assert gate.metrics is rotated.metrics
    assert await _ask(gate) == "miss"
    rejected = registry.get_sample_value(
        "cachegate_encrypted_values_rejected_total", {"reason": "unknown_key"}
    )
    assert rejected == 1


async def test_a_wrapped_redis_store_reports_store_metrics(redis_url: str, namespace: str) -> None:
    registry = CollectorRegistry()
    redis_store = RedisStore.from_url(redis_url, deadline=1.0, metrics=Metrics(registry=registry))
    encrypted = EncryptedStore(redis_store, keys=KEYS, active="k", digest_secret=b"d" * 32)
    assert encrypted.metrics is redis_store.metrics
    gate = _gate(encrypted, namespace)
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


async def test_metrics_other_than_the_stores_are_refused_when_built(redis_url: str) -> None:
    store_metrics = Metrics(registry=CollectorRegistry())
    other = Metrics(registry=CollectorRegistry())
    redis_store = RedisStore.from_url(redis_url, deadline=1.0, metrics=store_metrics)
    try:
        with pytest.raises(ValueError, match="metrics= differs"):
            CacheGate(policies=[], store=redis_store, metrics=other)
        with pytest.raises(ValueError, match="metrics= differs"):
            EncryptedStore(redis_store, KEYS, "k", digest_secret=b"d" * 32, metrics=other)
        with pytest.raises(ValueError, match="metrics= differs"):
            CachedEmbedder(LocalEmbedder(dimension=8), redis_store, metrics=other)
        # the same metrics, given again, or none: one path
        assert CacheGate(policies=[], store=redis_store, metrics=store_metrics).metrics is (
            store_metrics
        )
        embedder = CachedEmbedder(LocalEmbedder(dimension=8), redis_store)
        assert embedder.metrics is store_metrics
    finally:
        await redis_store.aclose()


def test_without_metrics_anywhere_everything_counts_into_the_default() -> None:
    memory = MemoryStore()
    assert CacheGate(policies=[], store=memory).metrics is default_metrics()
    encrypted = EncryptedStore(memory, KEYS, "k", digest_secret=b"d" * 32)
    assert encrypted.metrics is default_metrics()
    mine = Metrics(registry=CollectorRegistry())
    assert CacheGate(policies=[], store=memory, metrics=mine).metrics is mine  # nothing to split


async def test_a_breaker_the_caller_built_drives_the_breaker_gauge() -> None:
    registry = CollectorRegistry()
    changes: list[BreakerState] = []
    breaker = CircuitBreaker(failure_threshold=1, cooldown=60.0, on_change=changes.append)
    store = RedisStore.from_url(
        f"redis://127.0.0.1:{_closed_port()}",
        deadline=1.0,
        breaker=breaker,
        metrics=Metrics(registry=registry),
    )
    try:
        assert registry.get_sample_value("cachegate_store_breaker_open") == 0
        with pytest.raises(StoreError):
            await store.lookup("k", ["g"])
        assert breaker.state is BreakerState.OPEN
        assert changes == [BreakerState.OPEN]  # its own listener still hears it
        assert registry.get_sample_value("cachegate_store_breaker_open") == 1
        breaker.success()
        assert registry.get_sample_value("cachegate_store_breaker_open") == 0
    finally:
        await store.aclose()


async def test_a_breaker_already_open_when_given_shows_at_once() -> None:
    registry = CollectorRegistry()
    breaker = CircuitBreaker(failure_threshold=1, cooldown=60.0)
    breaker.failure()
    store = RedisStore.from_url(
        f"redis://127.0.0.1:{_closed_port()}", breaker=breaker, metrics=Metrics(registry=registry)
    )
    try:
        assert registry.get_sample_value("cachegate_store_breaker_open") == 1
    finally:
        await store.aclose()
