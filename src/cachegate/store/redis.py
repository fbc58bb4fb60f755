"""`RedisStore`: entries and generations in Redis (single node or Cluster) behind deadlines.

Every call has a deadline and no retry; a failure or timeout raises `StoreError`, which the
caller treats as a miss, and feeds a circuit breaker that stops asking a failing Redis until a
probe after the cool-down succeeds. An entry and its generations share a hash tag, so a lookup is
one MGET even on a Cluster.

Freshness under faults: a lookup reports the epoch of the server that answered
(`cachegate.store.epoch`), so state that went back in time is never trusted; a refused write
(OOM under `noeviction`, READONLY, MISCONF) puts the store in a writes-refused state in which
every lookup fails until a write succeeds again, and a background probe writes one small key
every `probe_interval` so a process that only reads notices a full Redis too.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from redis.asyncio.cluster import RedisCluster

from cachegate.breaker import BreakerState, CircuitBreaker
from cachegate.metrics import Metrics, default_metrics
from cachegate.store import commands
from cachegate.store.base import (
    Lookup,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
    StoreWritesRefused,
    random_generation,
)
from cachegate.store.calls import CallRunner
from cachegate.store.commands import RedisClient, generation, refused
from cachegate.store.epoch import ServerEpochs
from cachegate.store.pool import BoundedConnectionPool
from cachegate.store.urls import connect
from cachegate.tally import HistogramTally

T = TypeVar("T")


def _connect_timeout(deadline: float) -> float:
    """How long opening a connection may take: ten call deadlines, at least a second."""
    return max(deadline * 10, 1.0)


logger = logging.getLogger("cachegate.store")

WRITE_OPERATIONS = frozenset({"generations", "write", "bump", "set_many", "probe"})


class RedisStore:
    """A `Store` on redis-py's asyncio client (`Redis` or `RedisCluster`).

    It counts into `metrics` (by default `default_metrics()`); a gate or embedder over it
    counts there too, or refuses other metrics. Its breaker, given or its own, drives the
    `store_breaker_open` gauge.
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        deadline: float = 0.05,
        invalidation_deadline: float = 1.0,
        generation_ttl: float = 86_400.0,
        breaker: CircuitBreaker | None = None,
        metrics: Metrics | None = None,
        probe_interval: float = 1.0,
        recovery_grace: float = 2.0,
        warm_connections: int = 8,
    ) -> None:
        if min(deadline, invalidation_deadline, generation_ttl, probe_interval) <= 0:
            raise ValueError("deadlines, generation_ttl and probe_interval must be positive")
        self.client = client
        self.deadline = deadline
        self.invalidation_deadline = invalidation_deadline
        self.generation_ttl = generation_ttl
        self.metrics = metrics if metrics is not None else default_metrics()
        self.breaker = breaker if breaker is not None else CircuitBreaker()
        self.breaker.subscribe(self._breaker_changed)
        if self.breaker.state is not BreakerState.CLOSED:
            self._breaker_changed(self.breaker.state)
        self._cluster = isinstance(client, RedisCluster)
        pool = None if isinstance(client, RedisCluster) else client.connection_pool
        self._execute = pool.execute if isinstance(pool, BoundedConnectionPool) else None
        """Our pool's direct command path, when the client has our pool (see `_mget`)."""
        backstop = _connect_timeout(deadline) + invalidation_deadline
        self._calls = CallRunner(client, backstop=backstop)
        self._durations: dict[str, HistogramTally] = {}
        """Each operation's latency series, counted as a tally (see `cachegate.tally`)."""
        self.probe_interval = probe_interval
        self.warm_connections = warm_connections
        self.epochs = ServerEpochs(on_change=self._epoch_changed, per_node=self._cluster)
        self._install_epoch_check(client)
        self.writes_refused = False
        """True from a refused write until writes succeed again: no lookup is answered."""
        self.recovery_grace = recovery_grace
        self._recovering_since: float | None = None
        self.noeviction: bool | None = None
        """Redis's `maxmemory-policy` is `noeviction` (None: not known, CONFIG refused)."""
        self._probe_key = f"cachegate:probe:{secrets.token_hex(8)}"
        self._probing: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False

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
            connect_timeout=_connect_timeout(deadline),
            socket_timeout=None,  # every call is bounded by `CallRunner` instead
            max_connections=max_connections,
        )
        return cls(client, deadline=deadline, **kwargs)

    def _install_epoch_check(self, client: RedisClient) -> None:
        """Have every new connection read the server's identity before its first command."""
        hook = {"redis_connect_func": self.epochs.on_connect}
        if isinstance(client, RedisCluster):
            manager = client.nodes_manager
            manager.connection_kwargs.update(hook)
            for node in (*manager.startup_nodes.values(), *manager.nodes_cache.values()):
                node.connection_kwargs.update(hook)
        else:
            client.connection_pool.connection_kwargs.update(hook)

    def _epoch_changed(self) -> None:
        logger.warning("Redis restarted or failed over: entries written before are misses")
        self.metrics.store_epoch_changes.inc()

    def _set_writes_refused(self, refused: bool) -> None:
        self._recovering_since = None
        if refused == self.writes_refused:
            return
        self.writes_refused = refused
        if refused:
            logger.warning("Redis refuses writes: no hits are served until a write succeeds")
        else:
            logger.info("Redis takes writes again: hits are served again")
        self.metrics.store_writes_refused.set(1 if refused else 0)

    def _took_write(self) -> None:
        """A write succeeded while refused: serve hits again once writes have succeeded for
        `recovery_grace` seconds, so invalidations other processes kept pending while the
        store refused them have had their retries (every 0.5 s, 1 s deadline) land first."""
        now = time.monotonic()
        if self._recovering_since is None:
            self._recovering_since = now
        elif now - self._recovering_since >= self.recovery_grace:
            self._recovering_since = None
            self._set_writes_refused(False)

    def _epoch(self, key: str) -> int:
        """The epoch of the node that holds `key` (one node unless on a Cluster)."""
        client = self.client
        if self._cluster:
            assert isinstance(client, RedisCluster)
            try:
                node = client.get_node_from_key(key)
            except Exception:  # no topology yet: the latest epoch read
                return self.epochs.latest
            return self.epochs.of(node.name) if node is not None else self.epochs.latest
        return self.epochs.latest

    @property
    def _start_timeout(self) -> float:
        """How long each start-up step (connections, `CONFIG GET`) may take."""
        return max(self.deadline * 20, 2.0)

    async def start(self) -> None:
        """Open connections ahead of the first request, read `maxmemory-policy` and start the
        write probe. Never raises: a Redis that is down at start is the breaker's business."""
        if self._started:
            return
        self._started = True
        try:
            async with asyncio.timeout(self._start_timeout):
                if self._calls.unready:
                    await self._calls.initialize()
                await asyncio.gather(*(self.client.ping() for _ in range(self.warm_connections)))
        except Exception as error:
            logger.warning("Redis not reachable at start (%s)", type(error).__name__)
        await self._check_eviction_policy()
        self._start_probe()

    async def _check_eviction_policy(self) -> None:
        """Report `noeviction`: a full Redis then refuses invalidations (log, metric)."""
        try:
            async with asyncio.timeout(self._start_timeout):
                reply = await self.client.config_get("maxmemory-policy")
        except Exception as error:  # CONFIG is often refused by ACLs
            logger.warning("maxmemory-policy unknown (CONFIG GET: %s)", type(error).__name__)
            return
        values = reply.values() if isinstance(reply, dict) else ()
        policies = {v.decode() if isinstance(v, bytes) else str(v) for v in values}
        self.noeviction = "noeviction" in policies
        self.metrics.store_noeviction.set(1 if self.noeviction else 0)
        if self.noeviction:
            logger.warning(
                "Redis maxmemory-policy is noeviction: when it is full, writes and "
                "invalidations are refused and no hits are served until it has room"
            )

    def _start_probe(self) -> None:
        if self._probing is None or self._probing.done():
            self._probing = asyncio.get_running_loop().create_task(self._probe_loop())

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.probe_interval)
            try:
                await self.probe()
            except StoreError:
                continue

    async def probe(self) -> None:
        """Write one small key (with a TTL): the store takes writes, or `StoreWritesRefused`."""
        ttl = max(int(self.probe_interval * 3000), 1000)
        await self._call(
            "probe",
            lambda: self.client.set(self._probe_key, b"1", px=ttl),
            deadline=self.invalidation_deadline,
            guarded=False,
            feeds_breaker=False,
        )

    def _breaker_changed(self, state: BreakerState) -> None:
        self.metrics.breaker_open.set(0 if state is BreakerState.CLOSED else 1)

    async def _call(
        self,
        operation: str,
        call: Callable[[], Awaitable[T]],
        *,
        deadline: float,
        guarded: bool = True,
        feeds_breaker: bool = True,
    ) -> T:
        """Run one store call under its deadline, feeding the breaker and the metrics.

        The write probe does not feed the breaker's failures: the breaker is about the request
        path, and a probe that was in flight when Redis came back must not open it again.
        """
        metrics = self.metrics
        if self._probing is None and not self._closed:
            self._start_probe()
        if guarded and not self.breaker.allow():
            metrics.store_failures.labels(operation, "rejected").inc()
            raise StoreUnavailable(f"{operation}: circuit breaker open")
        started = time.perf_counter()
        try:
            result = await self._calls.run(call, deadline)  # see `cachegate.store.calls`
        except TimeoutError as error:
            self._failed(operation, "timeout", feeds_breaker)
            raise StoreTimeout(f"{operation}: no answer within {deadline:.3f}s") from error
        except Exception as error:  # redis-py can fail with more than RedisError: fail open
            if refused(error):
                # Redis answers, so the breaker stays closed; but it took no write
                self.breaker.success()
                self._set_writes_refused(True)
                metrics.store_failures.labels(operation, "refused").inc()
                raise StoreWritesRefused(f"{operation}: {str(error)[:40]}") from error
            self._failed(operation, "error", feeds_breaker)
            raise StoreError(f"{operation}: {type(error).__name__}") from error
        except BaseException:
            self.breaker.failure()
            raise
        self.breaker.success()
        if operation in WRITE_OPERATIONS and self.writes_refused:
            self._took_write()
        duration = self._durations.get(operation)
        if duration is None:
            child = metrics.store_duration.labels(operation)
            duration = self._durations[operation] = metrics.tallies.histogram(child)
        duration.observe(time.perf_counter() - started)
        metrics.tallies.touch()
        return result

    def _failed(self, operation: str, kind: str, feeds_breaker: bool = True) -> None:
        if feeds_breaker:
            self.breaker.failure()
        self.metrics.store_failures.labels(operation, kind).inc()

    async def lookup(self, key: str, generation_keys: Sequence[str]) -> Lookup:
        """One MGET of the entry and its generations (they share a hash tag), with the epoch
        of the node that answered. Refused while the store refuses writes."""
        if self.writes_refused:
            self.metrics.store_failures.labels("lookup", "refused").inc()
            raise StoreWritesRefused("lookup: the store refuses writes")
        values = await self._call(
            "lookup", lambda: self._mget([key, *generation_keys]), deadline=self.deadline
        )
        entry = values[0]
        return Lookup(
            entry if isinstance(entry, bytes) else None,
            tuple(map(generation, values[1:])),
            self._epoch(key),
        )

    def _mget(self, keys: list[str], *, one_slot: bool = True) -> Awaitable[list[Any]]:
        """MGET of keys, in order: straight on our pool's connection when the client has our
        pool, else through the client; on a Cluster split by slot unless they share one."""
        if self._execute is not None:
            return self._execute("MGET", *keys)
        client = self.client
        if isinstance(client, RedisCluster) and not one_slot:
            return client.mget_nonatomic(keys)
        return client.mget(keys)

    async def generations(self, generation_keys: Sequence[str]) -> tuple[int, ...]:
        """Create missing generations at a random start and read all, in one round trip."""
        if not generation_keys:
            return ()
        ttl = max(1, round(self.generation_ttl))
        results = await self._call(
            "generations",
            lambda: commands.create_and_read(self.client, generation_keys, ttl),
            deadline=self.deadline,
        )
        generations = [generation(value) for value in results[-len(generation_keys) :]]
        lost = [key for key, g in zip(generation_keys, generations, strict=True) if not g]
        if lost:  # not an integer: lost, so it restarts at a random value
            restarted = await self._restart(lost, self.deadline)
            generations = [
                g or restarted[key] for key, g in zip(generation_keys, generations, strict=True)
            ]
        return tuple(generations)

    async def _restart(self, keys: Sequence[str], deadline: float) -> dict[str, int]:
        """Overwrite unreadable generations with new random ones (as if lost): their old
        entries can never match again, and nothing keeps the garbage alive."""
        values = {key: random_generation() for key in keys}
        ttl = max(1, round(self.generation_ttl))
        await self._call(
            "generations", lambda: commands.overwrite(self.client, values, ttl), deadline=deadline
        )
        return values

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

        Tried even while the breaker is open: an invalidation is worth one call. A generation
        that is not an integer cannot be incremented: it is overwritten at a new random value,
        which invalidates as surely (a refused write still fails the bump).
        """
        ttl = max(1, round(self.generation_ttl))
        results = await self._call(
            "bump",
            lambda: commands.bump(self.client, generation_keys, ttl),
            deadline=self.invalidation_deadline,
            guarded=False,
        )
        errors = [result for result in results if isinstance(result, Exception)]
        if any(refused(error) for error in errors):
            self._set_writes_refused(True)
            self.metrics.store_failures.labels("bump", "refused").inc()
            raise StoreWritesRefused("bump: refused")
        if errors:
            unreadable = [
                k for i, k in enumerate(generation_keys) if commands.failed_incr(results, i)
            ]
            if not unreadable:
                raise StoreError(f"bump: {type(errors[0]).__name__}")
            await self._restart(unreadable, self.invalidation_deadline)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """MGET in order; on a Cluster split by slot and reassembled in order."""
        if not keys:
            return []
        values = await self._call(
            "get_many",
            lambda: self._mget([*keys], one_slot=False),
            deadline=self.deadline,
        )
        return [value if isinstance(value, bytes) else None for value in values]

    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl: float) -> None:
        """SET each key with one absolute TTL, in one pipeline."""
        if not items:
            return
        px = max(int(ttl * 1000), 1)
        await self._call(
            "set_many", lambda: commands.set_many(self.client, items, px), deadline=self.deadline
        )

    async def aclose(self) -> None:
        """Stop the probe; close the client and its connections."""
        self._closed = True
        if self._probing is not None:
            self._probing.cancel()
            self._probing = None
        await self._calls.aclose()
        await self.client.aclose()
