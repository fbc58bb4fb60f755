"""`RedisStore`: entries and generations in Redis (single node or Cluster) behind deadlines.

Every call has a deadline and no retry; a failure or timeout raises `StoreError`, which the
caller treats as a miss, and feeds a circuit breaker that stops asking a failing Redis until a
probe after the cool-down succeeds. An entry and its generations share a hash tag, so a lookup is
one MGET even on a Cluster.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from prometheus_client import Histogram
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from cachegate.breaker import BreakerState, CircuitBreaker
from cachegate.metrics import Metrics
from cachegate.store.base import (
    MISSING_GENERATION,
    Lookup,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
    random_generation,
)
from cachegate.store.urls import connect

T = TypeVar("T")
RedisClient = Redis | RedisCluster


def _generation(raw: object) -> int:
    """A stored generation as an int; anything unreadable counts as missing."""
    try:
        return int(raw) if isinstance(raw, bytes | str | int) else MISSING_GENERATION
    except ValueError:
        return MISSING_GENERATION


class RedisStore:
    """A `Store` on redis-py's asyncio client (`Redis` or `RedisCluster`)."""

    def __init__(
        self,
        client: RedisClient,
        *,
        deadline: float = 0.05,
        invalidation_deadline: float = 1.0,
        generation_ttl: float = 86_400.0,
        breaker: CircuitBreaker | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        if deadline <= 0 or invalidation_deadline <= 0 or generation_ttl <= 0:
            raise ValueError("deadlines and generation_ttl must be positive")
        self.client = client
        self.deadline = deadline
        self.invalidation_deadline = invalidation_deadline
        self.generation_ttl = generation_ttl
        self.metrics = metrics
        self.breaker = breaker or CircuitBreaker(on_change=self._breaker_changed)
        self._cluster = isinstance(client, RedisCluster)
        self._unready = self._cluster
        self._ready_lock = asyncio.Lock()
        self._durations: dict[str, Histogram] = {}

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        cluster: bool = False,
        deadline: float = 0.05,
        max_connections: int = 64,
        **kwargs: Any,
    ) -> RedisStore:
        """Connect to `url` with retries off: `redis://`, `rediss://` (TLS, `ssl_*` query
        parameters), `unix://`, an ACL `user:password@`, `redis+sentinel://` (see
        `cachegate.store.urls`); `cluster=True` for a Redis Cluster."""
        client: RedisClient = connect(
            url,
            cluster=cluster,
            connect_timeout=max(deadline * 10, 1.0),
            socket_timeout=max(kwargs.get("invalidation_deadline", 1.0), 1.0),
            max_connections=max_connections,
        )
        return cls(client, deadline=deadline, **kwargs)

    def _breaker_changed(self, state: BreakerState) -> None:
        if self.metrics is not None:
            self.metrics.breaker_open.set(0 if state is BreakerState.CLOSED else 1)

    async def _call(
        self,
        operation: str,
        call: Callable[[], Awaitable[T]],
        *,
        deadline: float,
        guarded: bool = True,
    ) -> T:
        """Run one store call under its deadline, feeding the breaker and the metrics."""
        metrics = self.metrics
        if guarded and not self.breaker.allow():
            if metrics is not None:
                metrics.store_failures.labels(operation, "rejected").inc()
            raise StoreUnavailable(f"{operation}: circuit breaker open")
        started = time.perf_counter()
        try:
            async with asyncio.timeout(deadline):
                if self._unready:
                    await self._initialize_cluster()
                result = await call()
        except TimeoutError as error:
            self._failed(operation, "timeout")
            raise StoreTimeout(f"{operation}: no answer within {deadline:.3f}s") from error
        except Exception as error:  # redis-py can fail with more than RedisError: fail open
            self._failed(operation, "error")
            raise StoreError(f"{operation}: {type(error).__name__}") from error
        except BaseException:
            self.breaker.failure()
            raise
        self.breaker.success()
        if metrics is not None:
            duration = self._durations.get(operation)
            if duration is None:
                duration = self._durations[operation] = metrics.store_duration.labels(operation)
            duration.observe(time.perf_counter() - started)
        return result

    async def _initialize_cluster(self) -> None:
        """Discover a Cluster's topology once, before the first command: redis-py 8.1 drops
        connections under concurrent first commands when it initialises lazily."""
        async with self._ready_lock:
            if self._unready:
                assert isinstance(self.client, RedisCluster)
                await self.client.initialize()
                self._unready = False

    def _failed(self, operation: str, kind: str) -> None:
        self.breaker.failure()
        if self.metrics is not None:
            self.metrics.store_failures.labels(operation, kind).inc()

    async def lookup(self, key: str, generation_keys: Sequence[str]) -> Lookup:
        """One MGET of the entry and its generations (they share a hash tag)."""
        values = await self._call(
            "lookup", lambda: self.client.mget([key, *generation_keys]), deadline=self.deadline
        )
        entry = values[0]
        return Lookup(
            entry if isinstance(entry, bytes) else None,
            tuple(_generation(value) for value in values[1:]),
        )

    async def generations(self, generation_keys: Sequence[str]) -> tuple[int, ...]:
        """Create missing generations at a random start and read all, in one round trip."""

        async def call() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            ttl = max(1, round(self.generation_ttl))
            for key in generation_keys:
                pipe.set(key, random_generation(), nx=True, ex=ttl)
            for key in generation_keys:  # GETs, not MGET: a cluster pipeline refuses MGET
                pipe.get(key)
            return await pipe.execute()

        if not generation_keys:
            return ()
        results = await self._call("generations", call, deadline=self.deadline)
        return tuple(_generation(value) for value in results[-len(generation_keys) :])

    async def write(self, key: str, value: bytes, ttl: float) -> None:
        """SET with an absolute expiry in milliseconds."""
        await self._call(
            "write",
            lambda: self.client.set(key, value, px=max(int(ttl * 1000), 1)),
            deadline=self.deadline,
        )

    async def delete(self, key: str) -> None:
        """DEL one key."""
        await self._call("delete", lambda: self.client.delete(key), deadline=self.deadline)

    async def bump(self, generation_keys: Sequence[str]) -> None:
        """INCR each generation (a lost one restarts at a random value first), one round trip.

        Tried even while the breaker is open: an invalidation is worth one call.
        """

        async def call() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            ttl = max(1, round(self.generation_ttl))
            for key in generation_keys:
                pipe.set(key, random_generation(), nx=True, ex=ttl)
                pipe.incr(key)
                pipe.expire(key, ttl)
            return await pipe.execute()

        await self._call("bump", call, deadline=self.invalidation_deadline, guarded=False)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """MGET in order; on a Cluster split by slot and reassembled in order."""
        if not keys:
            return []
        client = self.client
        if isinstance(client, RedisCluster):
            values = await self._call(
                "get_many", lambda: client.mget_nonatomic(list(keys)), deadline=self.deadline
            )
        else:
            values = await self._call(
                "get_many", lambda: client.mget(list(keys)), deadline=self.deadline
            )
        return [value if isinstance(value, bytes) else None for value in values]

    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl: float) -> None:
        """SET each key with one absolute TTL, in one pipeline."""
        if not items:
            return

        async def call() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for key, value in items:
                pipe.set(key, value, px=max(int(ttl * 1000), 1))
            return await pipe.execute()

        await self._call("set_many", call, deadline=self.deadline)

    async def aclose(self) -> None:
        """Close the client and its connections."""
        await self.client.aclose()
