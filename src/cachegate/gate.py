"""`CacheGate`: one cache's configuration and components, shared by the middleware and the app."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any

from cachegate.comparators import MismatchLog
from cachegate.experiment import Experiments
from cachegate.extractors import RequestView
from cachegate.invalidation import Invalidator
from cachegate.keying import Keying, RequestFacts
from cachegate.keys import CacheScope, KeySpace
from cachegate.limits import Limits
from cachegate.metrics import Metrics, RouteMetrics
from cachegate.policy import Policy, Router, WriteRule
from cachegate.results import ResultCache
from cachegate.rollout import Rollout, StaticRollout
from cachegate.singleflight import SingleFlight
from cachegate.store.base import Store, digest_secret_of, metrics_of
from cachegate.store.codec import Entry
from cachegate.store.memory import MemoryStore
from cachegate.tee import LiveStream, LiveStreams
from cachegate.types import ASGIApp, Message, Receive

DEFAULT_LIMITS = Limits()


class CacheGate:
    """Everything one cache needs, passed in; sane defaults for the rest.

    `store` defaults to a `MemoryStore`, `rollout` to serving for every tenant, `limits` to
    `Limits()` (sizes, waits and background work).
    `namespace` is the prefix of every store key (not the metrics' namespace: that is
    `Metrics(namespace=...)`); `key_secret` (at least 16 bytes, the same in every process; an
    `EncryptedStore` brings its own) makes every digest in a store key an HMAC. `metrics`
    defaults to the store's (a `RedisStore` or `EncryptedStore` is given its metrics when it is
    built), else `default_metrics()`; metrics other than the store's raise `ValueError`.
    """

    def __init__(
        self,
        *,
        policies: Iterable[Policy],
        write_rules: Iterable[WriteRule] = (),
        store: Store | None = None,
        rollout: Rollout | None = None,
        namespace: str = "cachegate",
        key_secret: bytes | None = None,
        metrics: Metrics | None = None,
        limits: Limits = DEFAULT_LIMITS,
        sample: Callable[[], float] = random.random,
    ) -> None:
        policies = list(policies)
        write_rules = list(write_rules)
        self.store: Store = store if store is not None else MemoryStore()
        self.keyspace = KeySpace(namespace, digest_secret_of(self.store, key_secret))
        self.metrics = metrics_of(self.store, metrics)
        self.router = Router([*policies, *write_rules])
        self.rollout: Rollout = rollout if rollout is not None else StaticRollout()
        self.keying = Keying(self.keyspace)
        self.results = ResultCache(
            self.store, metrics=self.metrics, max_entry_bytes=limits.max_entry_bytes
        )
        self.invalidator = Invalidator(self.store, self.keyspace, metrics=self.metrics)
        self.flights: SingleFlight[Entry | LiveStream] = SingleFlight()
        self.live_streams = LiveStreams()
        self.mismatches = MismatchLog()
        self.limits = limits
        self.sample = sample
        self._background: set[asyncio.Task[None]] = set()
        self.metrics.initialise_routes(
            [policy.route for policy in policies], [rule.reason for rule in write_rules]
        )
        self.route_metrics = {
            policy.route: RouteMetrics(self.metrics, policy.route) for policy in policies
        }

    def keys_for(
        self,
        method: str,
        path: str,
        *,
        headers: Sequence[tuple[bytes, bytes]] = (),
        query_string: bytes = b"",
        body: bytes = b"",
        scope: Mapping[str, Any] | None = None,
    ) -> RequestFacts:
        """Which keys a request maps to, as the middleware computes them: its cache scope, its
        entry key and its generation keys. `scope` is the ASGI scope an authentication
        middleware filled (`authenticated` reads its `user`). `LookupError` when no policy
        matches; `BadRequest`, with the bypass reason, when the request would bypass for what
        it says (rollout, guard and pending invalidations aside)."""
        match = self.router.match(method.upper(), path)
        if match is None or not isinstance(match.rule, Policy):
            raise LookupError(f"no policy for {method} {path}")
        request = RequestView(
            method=method.upper(),
            path=path,
            path_params=match.path_params,
            headers=list(headers),
            query_string=query_string,
            body=body,
            scope=scope,
        )
        return self.keying.request(match.rule, request)

    async def invalidate(
        self, tenant: str, subject: str | None = None, *, reason: str = "api"
    ) -> bool:
        """Invalidate a tenant's (or one subject's) cached answers; False if kept pending."""
        return await self.invalidator.invalidate(CacheScope(tenant, subject), reason)

    def counts(self, route: str) -> RouteMetrics:
        """The series a cached route's requests count into, bound once."""
        return self.route_metrics[route]

    def experiments(self, app: ASGIApp, policy: Policy) -> Experiments:
        """The shadow, verify and noise runs of `policy`'s route on `app`."""
        return Experiments(app, policy, self.results, self.mismatches, self.limits.max_entry_bytes)

    def background(self, work: Coroutine[Any, Any, None]) -> bool:
        """Run re-computation work in the background if a slot is free; False if skipped."""
        if len(self._background) >= self.limits.verify_concurrency:
            work.close()
            return False
        task = asyncio.get_running_loop().create_task(self._bounded(work))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        # a task cancelled before it ran (aclose at shutdown) never awaited `work`: close it
        task.add_done_callback(lambda _: work.close())
        return True

    async def _bounded(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            async with asyncio.timeout(self.limits.verify_timeout):
                await work
        except Exception:
            return

    async def drain(self) -> None:
        """Wait for background work to finish (tests, shutdown)."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def lifespan(self, receive: Receive) -> Receive:
        """Wrap an ASGI lifespan `receive`: `start` at startup and `shutdown` at shutdown,
        before the app sees either message."""

        async def lifespan_receive() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.start()
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
            return message

        return lifespan_receive

    async def start(self) -> None:
        """Prepare the store before the first request (the middleware calls it at lifespan
        startup): open connections, report its eviction policy, start its write probe."""
        store: object = self.store
        while store is not None:
            start = getattr(store, "start", None)
            if start is not None:
                await start()
                return
            store = getattr(store, "inner", None)

    async def shutdown(self) -> None:
        """Try pending invalidations once more (the middleware calls it at lifespan shutdown);
        what the store still refuses is lost, counted and logged. The request counts reach
        their series (a multiprocess worker's files) before the worker exits."""
        await self.invalidator.flush()
        self.metrics.tallies.flush()

    async def aclose(self) -> None:
        """Cancel background work, try pending invalidations once more, close the store."""
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.invalidator.aclose()
        await self.store.aclose()
        self.metrics.tallies.flush()
