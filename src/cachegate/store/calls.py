"""Running one Redis call under its deadline, without ever leaving a dirty pooled connection.

Two ways, chosen per call:

- In the request's task, when the pool's next connection is open (`BoundedConnectionPool`, the
  common case): the call is awaited directly and a timer cancels it at the deadline. redis-py
  closes a connection whose command is cancelled, sent or not, so a late reply can never
  answer another command; the pool's release cannot be interrupted, so no connection is lost.
- In a task of its own, when a connection must be opened first (or a Cluster's topology
  discovered, or the pool is not ours): the request waits for it at most the deadline; past
  it, the call is left to finish in the background (within its `backstop`) instead of being
  cancelled: it reads its own late reply, and a connection it was opening is ready for the
  next request (under load, a handshake can take longer than one deadline).

These two bound every call, so the client needs no socket timeout of its own (`RedisStore`
sets none): with one, redis-py wraps every command's send in `asyncio.wait_for`, a task per
command, which cost a Redis hit more than the rest of its deadline handling.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

T = TypeVar("T")


class CallRunner:
    """Runs the calls of one client under deadlines (see the module's docstring)."""

    def __init__(self, client: Redis | RedisCluster, backstop: float) -> None:
        self.client = client
        self.backstop = backstop
        """Seconds a call left in the background may take before it is cancelled."""
        self.cluster = isinstance(client, RedisCluster)
        self.unready = self.cluster
        """A Cluster whose topology is not known yet."""
        self._ready_lock = asyncio.Lock()
        pool = None if isinstance(client, RedisCluster) else client.connection_pool
        self._next_ready: Callable[[], bool] | None = getattr(pool, "next_ready", None)
        self._abandoned: set[asyncio.Future[Any]] = set()
        """Calls past their deadline, finishing in the background."""

    async def run(self, call: Callable[[], Awaitable[T]], deadline: float) -> T:
        """`call()`'s result or exception, or `TimeoutError` past `deadline` seconds."""
        ready = self._next_ready
        if ready is not None and ready():
            return await _cancelled_at(call(), deadline)
        return await self._in_background(call, deadline)

    async def _in_background(self, call: Callable[[], Awaitable[T]], deadline: float) -> T:
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._run(call))
        try:
            await _within(loop, task, deadline)
        except BaseException:
            task.cancel()
            task.add_done_callback(_forget)  # it may still end in an error nobody awaits
            raise
        if not task.done():
            self._abandoned.add(task)
            task.add_done_callback(self._abandoned.discard)
            task.add_done_callback(_forget)
            raise TimeoutError
        return task.result()

    async def _run(self, call: Callable[[], Awaitable[T]]) -> T:
        async with asyncio.timeout(self.backstop):
            if self.unready:
                await self.initialize()
            return await call()

    async def initialize(self) -> None:
        """Discover a Cluster's topology once, before the first command: redis-py 8.1 drops
        connections under concurrent first commands when it initialises lazily."""
        async with self._ready_lock:
            if self.unready:
                assert isinstance(self.client, RedisCluster)
                await self.client.initialize()
                self.unready = False

    async def aclose(self) -> None:
        """Cancel the calls still finishing in the background."""
        for task in list(self._abandoned):
            task.cancel()
        await asyncio.gather(*self._abandoned, return_exceptions=True)


class _Expiry:
    """The timer's callback: cancels `task`, and remembers that it did."""

    __slots__ = ("fired", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.fired = False

    def __call__(self) -> None:
        self.fired = True
        self.task.cancel()


async def _cancelled_at(awaitable: Awaitable[T], deadline: float) -> T:
    """Await `awaitable` in this task, cancelled after `deadline` seconds (`TimeoutError`):
    `asyncio.timeout` with one timer and no context manager."""
    task = asyncio.current_task()
    assert task is not None
    expiry = _Expiry(task)
    timer = task.get_loop().call_later(deadline, expiry)
    try:
        result = await awaitable
    except BaseException as error:
        # the timer's cancellation is taken back; what remains is someone else's
        if expiry.fired and task.uncancel() == 0 and isinstance(error, asyncio.CancelledError):
            raise TimeoutError from None
        raise
    finally:
        timer.cancel()
    if expiry.fired:  # cancelled, and the call swallowed it
        task.uncancel()
    return result


async def _within(
    loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any], deadline: float
) -> None:
    """Wait until `task` is done or `deadline` seconds passed, whichever comes first (lighter
    than `asyncio.wait`: one future, one timer)."""
    waiter = loop.create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    task.add_done_callback(wake)
    timer = loop.call_later(deadline, wake)
    try:
        await waiter
    finally:
        timer.cancel()
        task.remove_done_callback(wake)


def _forget(task: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned call's outcome, so it is never reported as unretrieved."""
    if not task.cancelled():
        task.exception()
