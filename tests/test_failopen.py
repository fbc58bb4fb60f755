"""Fail-open on a Redis that does not answer, refuses, or is gone: a redis-server this module
spawns on a free port (never the shared one), stops, pauses and starts again."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import anyio
import pytest
from support.apps import Harness
from support.redis_server import RedisServer
from support.stores import fresh_metrics

from cachegate.breaker import BreakerState
from cachegate.store import RedisStore

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

DEADLINE = 0.05


@pytest.fixture
def server(spawned_redis: RedisServer) -> RedisServer:
    return spawned_redis


@pytest.fixture
async def harness(server: RedisServer) -> AsyncIterator[Harness]:
    store = RedisStore.from_url(
        server.url, deadline=DEADLINE, invalidation_deadline=0.2, metrics=fresh_metrics()
    )
    store.breaker.cooldown = 0.3  # the default is 2 s; the behaviour is the same
    async with Harness(store=store, namespace="failopen") as h:
        h.gate.invalidator.retry_interval = 0.05
        yield h
    await store.aclose()


def failures(h: Harness, operation: str, kind: str) -> float:
    return h.sample("cachegate_store_failures_total", operation=operation, kind=kind)


async def timed_ask(h: Harness, **options: object) -> tuple[str, float]:
    started = time.monotonic()
    response = await h.ask(**options)  # type: ignore[arg-type]
    assert response.status_code == 200
    assert response.json()["tenant"] == options.get("tenant", "t1")
    return response.headers["x-cachegate"], time.monotonic() - started


async def until(condition: object, limit: float = 5.0) -> None:
    """Poll an async condition every 50 ms."""
    deadline = time.monotonic() + limit
    while not await condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        await anyio.sleep(0.05)


async def test_a_silent_or_dead_redis_fails_open_and_caching_resumes_by_itself(
    server: RedisServer, harness: Harness
) -> None:
    h = harness
    store = h.store
    assert isinstance(store, RedisStore)
    assert [(await timed_ask(h))[0] for _ in range(2)] == ["miss", "hit"]

    server.pause()  # accepts connections, never answers
    for _ in range(8):
        path, _ = await timed_ask(h)
        assert path == "bypass"
    assert h.bypassed("store_error") == 8
    # Counted as timeouts: the 50 ms deadline ended them, not the 1 s socket timeout (an error)
    assert failures(h, "lookup", "timeout") == store.breaker.failure_threshold == 5
    assert failures(h, "lookup", "rejected") == 3  # the breaker stopped asking
    assert store.breaker.state is BreakerState.OPEN
    assert h.sample("cachegate_store_breaker_open") == 1
    assert h.service.calls["query"] == 9  # every request was served fresh

    server.stop()  # gone: connections are refused
    await anyio.sleep(0.35)  # past the cool-down: the probe fails, the breaker opens again
    for _ in range(3):
        assert (await timed_ask(h))[0] == "bypass"
    assert failures(h, "lookup", "error") >= 1
    assert store.breaker.state is BreakerState.OPEN

    server.start()  # back on the same port, empty
    seen: list[str] = []

    async def cached() -> bool:
        seen.append((await timed_ask(h))[0])
        return seen[-1] == "hit"

    await until(cached)
    assert seen[-2:] == ["miss", "hit"]
    assert set(seen[:-2]) <= {"bypass"}
    assert store.breaker.state is BreakerState.CLOSED
    assert h.sample("cachegate_store_breaker_open") == 0


async def test_a_reply_that_came_too_late_is_never_read_as_another_requests_answer(
    server: RedisServer, harness: Harness
) -> None:
    """A lookup that timed out leaves its command on the connection; when Redis wakes up, its
    late reply (another tenant's entry and matching generations) must not answer the next one."""
    h = harness
    h.service.stamp = True
    own = {tenant: (await h.ask(tenant=tenant)).json()["computation"] for tenant in ("t1", "t2")}
    server.pause()
    assert (await timed_ask(h, tenant="t1"))[0] == "bypass"  # its MGET is still queued
    server.resume()
    await anyio.sleep(0.05)  # Redis answers the queued MGET now
    for tenant in ("t2", "t1", "t2", "t1"):
        response = await h.ask(tenant=tenant)
        assert response.json()["tenant"] == tenant
        if response.headers["x-cachegate"] == "hit":
            assert response.json()["computation"] == own[tenant]


async def test_an_invalidation_while_redis_is_down_is_kept_pending_until_it_returns(
    server: RedisServer, harness: Harness
) -> None:
    h = harness
    for client in ("c1", "c2"):
        await h.ask(client=client)
    server.stop()
    assert await h.gate.invalidate("t1", "c1") is False
    assert h.gate.invalidator.pending_count == 1
    assert h.sample("cachegate_cache_invalidation_failures_total") == 1

    assert (await timed_ask(h, client="c1"))[0] == "bypass"
    assert (await timed_ask(h, client=None))[0] == "bypass"  # may draw on c1's data
    assert h.bypassed("invalidation_pending") == 2
    assert (await timed_ask(h, client="c2"))[0] == "bypass"  # another scope: tries the store
    assert h.bypassed("store_error") == 1

    await anyio.sleep(0.3)
    assert h.gate.invalidator.pending_count == 1  # still down: still pending
    assert (await timed_ask(h, client="c1"))[0] == "bypass"
    assert h.bypassed("invalidation_pending") == 3

    server.start()

    async def acknowledged() -> bool:
        return h.gate.invalidator.pending_count == 0

    await until(acknowledged)

    async def hit_again() -> bool:
        return (await timed_ask(h, client="c1"))[0] == "hit"

    await until(hit_again)
    assert h.bypassed("invalidation_pending") == 3


async def test_a_pending_invalidation_is_really_applied_when_redis_answers_again(
    server: RedisServer, harness: Harness
) -> None:
    """Redis keeps its data but refuses us for a while (auth): the retry must advance the
    generation, or the entry computed before the invalidation would be served again."""
    h = harness
    h.service.stamp = True
    stale = (await h.ask(client="c1")).json()["computation"]
    await h.ask(client="c2")
    admin = server.client()
    try:
        admin.config_set("requirepass", "not-for-you")
        admin.client_kill_filter(_type="normal", skipme=True)  # our store must log in again
        assert await h.gate.invalidate("t1", "c1") is False
        assert (await timed_ask(h, client="c1"))[0] == "bypass"
        assert h.bypassed("invalidation_pending") == 1
        await anyio.sleep(0.2)
        assert h.gate.invalidator.pending_count == 1
        admin.config_set("requirepass", "")
    finally:
        admin.close()

    async def acknowledged() -> bool:
        return h.gate.invalidator.pending_count == 0

    await until(acknowledged)

    async def c2_hits() -> bool:  # the data survived: c2's entry is still there
        return (await timed_ask(h, client="c2"))[0] == "hit"

    await until(c2_hits)
    fresh = await h.ask(client="c1")
    assert fresh.headers["x-cachegate"] == "miss"
    assert fresh.json()["computation"] != stale
