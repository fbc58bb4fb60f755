"""A store call cut by its deadline (or cancelled) on a private redis-server this module pauses
(SIGSTOP): its connection is closed, never reused with a reply pending, and the bounded pool
loses none of its connections. Each test runs on both of redis-py's reply parsers: its own
and hiredis's (`cachegate[hiredis]`), which redis-py picks whenever hiredis is installed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis
import redis.asyncio
from redis._parsers import BaseParser, _AsyncHiredisParser, _AsyncRESP3Parser
from redis.utils import HIREDIS_AVAILABLE
from support.components import missing
from support.redis_server import RedisServer

from cachegate.breaker import CircuitBreaker
from cachegate.store import RedisStore, StoreTimeout
from cachegate.store.pool import BoundedConnectionPool

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


PARSERS: dict[str, type[BaseParser]] = {
    "python": _AsyncRESP3Parser,
    "hiredis": _AsyncHiredisParser,
}


@pytest.fixture(params=sorted(PARSERS))
def parser(request: pytest.FixtureRequest) -> type[BaseParser]:
    if request.param == "hiredis" and not HIREDIS_AVAILABLE:
        missing("hiredis (`pip install cachegate[hiredis]`)")
    return PARSERS[request.param]


@pytest.fixture
def server(spawned_redis: RedisServer) -> RedisServer:
    admin = spawned_redis.client()
    try:
        admin.set("a", b"A")
        admin.set("b", b"B")
    finally:
        admin.close()
    return spawned_redis


def quiet_store(server: RedisServer, connections: int, parser: type[BaseParser]) -> RedisStore:
    """A 50 ms deadline, no write probe, a breaker that stays closed; replies read by `parser`."""
    store = RedisStore.from_url(
        server.url,
        deadline=0.05,
        max_connections=connections,
        probe_interval=3600,
        breaker=CircuitBreaker(failure_threshold=1000),
    )
    pool_of(store).connection_kwargs["parser_class"] = parser
    return store


@pytest.fixture
async def store(server: RedisServer, parser: type[BaseParser]) -> AsyncIterator[RedisStore]:
    """One connection, so a connection left dirty would be the next call's."""
    store = quiet_store(server, 1, parser)
    yield store
    server.resume()
    await store.aclose()


def pool_of(store: RedisStore) -> BoundedConnectionPool:
    assert isinstance(store.client, redis.asyncio.Redis)
    pool = store.client.connection_pool
    assert isinstance(pool, BoundedConnectionPool)
    return pool


def store_connections(server: RedisServer) -> int:
    """Clients connected to the server, but for the one asking."""
    admin = server.client()
    try:
        return int(admin.info("clients")["connected_clients"]) - 1
    finally:
        admin.close()


async def test_the_connections_read_with_the_parser_under_test(
    store: RedisStore, parser: type[BaseParser]
) -> None:
    assert await store.get_many(["a", "b", "missing"]) == [b"A", b"B", None]
    (connection,) = pool_of(store)._available_connections
    assert type(connection._parser) is parser


async def test_a_call_past_its_deadline_leaves_no_connection_that_answers_another_command(
    server: RedisServer, store: RedisStore
) -> None:
    assert await store.get_many(["a"]) == [b"A"]
    pool = pool_of(store)
    assert pool.next_ready()  # so the next call runs in this task, under a cancelling timer
    server.pause()
    with pytest.raises(StoreTimeout):
        await store.get_many(["a"])  # its GET is on the wire; the reply comes after resume
    assert not pool.next_ready()  # its connection was closed, not put back with a reply pending
    server.resume()
    for key, value in (("b", b"B"), ("a", b"A"), ("b", b"B")):
        assert await store.get_many([key]) == [value]


async def test_a_lookup_past_its_deadline_closes_its_connection_on_the_direct_path(
    server: RedisServer, store: RedisStore
) -> None:
    """A lookup's MGET runs on the pool's connection directly (`BoundedConnectionPool.execute`),
    not through the client: cut at its deadline, that connection is closed all the same."""
    assert (await store.lookup("a", ["b"])).value == b"A"
    pool = pool_of(store)
    assert pool.next_ready()
    server.pause()
    with pytest.raises(StoreTimeout):
        await store.lookup("a", ["b"])
    assert not pool.next_ready()
    assert len(pool._in_use_connections) == 0
    server.resume()
    assert (await store.lookup("b", ["a"])).value == b"B"
    assert await pool.execute("GET", "a") == b"A"


async def test_an_error_reply_on_the_direct_path_leaves_its_connection_clean(
    server: RedisServer, store: RedisStore
) -> None:
    pool = pool_of(store)
    admin = server.client()
    try:
        admin.hset("h", "f", "v")
    finally:
        admin.close()
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        await pool.execute("GET", "h")
    assert pool.next_ready()  # the error was read whole: the connection goes back open
    assert await pool.execute("GET", "a") == b"A"
    assert await store.get_many(["b", "missing", "h"]) == [b"B", None, None]


async def test_a_cancelled_call_is_not_a_timeout_and_closes_its_connection(
    server: RedisServer, store: RedisStore
) -> None:
    store.deadline = 30.0
    assert await store.get_many(["a"]) == [b"A"]
    server.pause()
    call = asyncio.create_task(store.get_many(["a"]))
    await asyncio.sleep(0.1)  # the GET is sent; its reply waits for the resume
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert not pool_of(store).next_ready()
    server.resume()
    assert await store.get_many(["b"]) == [b"B"]


async def test_calls_cut_by_their_deadline_give_every_connection_back(
    server: RedisServer, parser: type[BaseParser]
) -> None:
    store = quiet_store(server, 3, parser)
    try:
        await asyncio.gather(*(store.get_many(["a"]) for _ in range(10)))
        server.pause()
        for _ in range(3):  # on open connections, then on ones being opened, then waiting
            results = await asyncio.gather(
                *(store.get_many(["a"]) for _ in range(6)), return_exceptions=True
            )
            assert all(isinstance(result, StoreTimeout) for result in results)
        server.resume()
        store.deadline = 30.0  # the calls abandoned while paused finish first
        for _ in range(3):
            values = await asyncio.gather(*(store.get_many(["b"]) for _ in range(20)))
            assert values == [[b"B"]] * 20
        assert store_connections(server) <= 3
        assert len(pool_of(store)._in_use_connections) == 0
    finally:
        server.resume()
        await store.aclose()


async def test_a_call_left_in_the_background_ends_at_its_backstop(
    server: RedisServer, parser: type[BaseParser]
) -> None:
    """The client has no socket timeout: a call opening a connection to a server that never
    answers is cut by the runner's backstop, so it cannot hold its connection forever."""
    store = quiet_store(server, 1, parser)
    store._calls.backstop = 0.5
    try:
        server.pause()
        with pytest.raises(StoreTimeout):
            await store.get_many(["a"])  # no connection yet: it is opened in the background
        assert store._calls._abandoned  # still waiting for the paused server
        for _ in range(200):
            if not store._calls._abandoned:
                break
            await asyncio.sleep(0.05)
        assert not store._calls._abandoned  # the server is still paused: the backstop ended it
        server.resume()
        store.deadline = 30.0
        assert await store.get_many(["b"]) == [b"B"]
    finally:
        server.resume()
        await store.aclose()


async def test_a_checkout_woken_then_cancelled_passes_its_turn_on(server: RedisServer) -> None:
    pool = BoundedConnectionPool.from_url(server.url, max_connections=1)
    try:
        held = await pool.get_connection()
        first = asyncio.create_task(pool.get_connection())
        second = asyncio.create_task(pool.get_connection())
        await asyncio.sleep(0)  # both wait for a turn
        assert not first.done() and not second.done()
        await pool.release(held)  # wakes the first...
        first.cancel()  # ...which is cancelled before it runs
        async with asyncio.timeout(10):  # a lost turn would wait forever
            assert await second is held
        assert first.cancelled()
    finally:
        await pool.aclose()
