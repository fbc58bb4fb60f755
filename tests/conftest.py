"""Shared fixtures: one store contract, run on `MemoryStore` and on the real Redis.

Redis tests use a namespace of their own and delete only its keys; they never flush the shared
server. Under `CI=true` a Redis that does not answer fails the run instead of skipping.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest
import redis
from support.components import missing
from support.redis_cluster import redis_cluster  # noqa: F401  (a private 3-master cluster)
from support.redis_server import RedisServer, redis_server_binary, running_redis
from support.stores import fresh_metrics
from support.unleash_server import unleash_server  # noqa: F401  (the session's real Unleash server)

from cachegate.store import MemoryStore, RedisStore, Store

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
STORE_DEADLINE = 5.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def namespace() -> str:
    """A namespace no other test or run uses, so keys never collide."""
    return f"cgtest-{uuid.uuid4().hex[:12]}"


def delete_namespace(url: str, namespace: str) -> None:
    """Delete this test's keys (only those) from a Redis."""
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def redis_url() -> str:
    """The shared Redis, checked to answer."""
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError:
        missing(f"Redis at {REDIS_URL}")
    return REDIS_URL


@asynccontextmanager
async def opened_store(
    kind: str, request: pytest.FixtureRequest, namespace: str
) -> AsyncIterator[Store]:
    """A store of `kind` (`memory`, `redis`, `cluster`); Redis keys are cleaned up after.

    The deadline is generous (5 s): these stores serve behaviour tests, and on a loaded 2-core
    machine a cold connection (topology, the epoch's INFO) can outlast a tight one and turn an
    expected miss into a fail-open bypass. Fault tests build stores with their own deadlines.
    A Redis store counts into metrics of its own (a fresh registry), which a gate over it uses.
    """
    if kind == "memory":
        yield MemoryStore()
        return
    if kind == "cluster":
        url = request.getfixturevalue("redis_cluster").url
        cluster_store = RedisStore.from_url(
            url, cluster=True, deadline=STORE_DEADLINE, metrics=fresh_metrics()
        )
        try:
            yield cluster_store
        finally:
            await cluster_store.aclose()
        return
    url = request.getfixturevalue("redis_url")
    redis_store = RedisStore.from_url(url, deadline=STORE_DEADLINE, metrics=fresh_metrics())
    try:
        yield redis_store
    finally:
        await redis_store.aclose()
        delete_namespace(url, namespace)


@pytest.fixture(params=["memory", "redis", "cluster"])
async def store(request: pytest.FixtureRequest, namespace: str) -> AsyncIterator[Store]:
    """Each store implementation in turn."""
    async with opened_store(request.param, request, namespace) as opened:
        yield opened


@pytest.fixture(params=["memory", "redis"])
async def l1_store(request: pytest.FixtureRequest, namespace: str) -> AsyncIterator[Store]:
    """`MemoryStore`, then the shared Redis: for tests that need no Cluster."""
    async with opened_store(request.param, request, namespace) as opened:
        yield opened


@pytest.fixture
def spawned_redis() -> Iterator[RedisServer]:
    """A private redis-server on a free port, for tests that stop, pause or restart it."""
    binary = redis_server_binary()
    if binary is None:
        missing("redis-server")
    assert binary is not None
    with running_redis(binary) as spawned:
        yield spawned
