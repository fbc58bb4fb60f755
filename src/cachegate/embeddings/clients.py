"""The two embedders users construct: `CachedEmbedder` (async) and `CachedEmbedderSync`.

Both take the client's `embed(...)` arguments and return the SDK's own `EmbedByTypeResponse`,
so adopting the cache changes one line. Options come as one `EmbedderConfig` (`config=`), as
its fields by keyword, or both (keywords win).
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, Unpack

from cohere.types import EmbedByTypeResponse

from cachegate.embeddings.accounting import EmbedderStats
from cachegate.embeddings.cohere import AsyncEmbedClient, SyncEmbedClient
from cachegate.embeddings.config import EmbedderConfig
from cachegate.embeddings.core import Core
from cachegate.embeddings.plan import EmbedCall, arguments
from cachegate.metrics import Metrics
from cachegate.store.base import Store

T = TypeVar("T")


class _Embedder:
    """What both embedders expose besides `embed`."""

    _core: Core

    @property
    def config(self) -> EmbedderConfig:
        """This embedder's configuration."""
        return self._core.config

    @property
    def metrics(self) -> Metrics:
        """Where this embedder counts: `config.metrics`, else its store's, else the default."""
        return self._core.metrics

    @property
    def stats(self) -> EmbedderStats:
        """This embedder's totals so far (the same counts its metrics were given)."""
        return self._core.tally.stats

    @property
    def shadow_threshold(self) -> float:
        """The similarity at or above which a shadow comparison of float vectors matches."""
        return self._core.config.float_threshold


class CachedEmbedder(_Embedder):
    """A drop-in cache in front of `cohere.AsyncClientV2.embed`.

    `await embedder.embed(texts=..., model=..., input_type=..., ...)` takes the client's
    arguments and returns its `EmbedByTypeResponse`. The tenant comes from `tenant=` on the call,
    else from the `tenant` callable (read in the caller's context), else from the CacheGate
    request being handled (`cachegate.rollout.current_tenant()`); with the default
    `scope="tenant"` a call without a tenant is not cached. `scope="global"` shares vectors
    across tenants and must be chosen explicitly. Pass the gate's `rollout` so calls outside a
    cached request (background jobs, other routes) follow the flags and the kill switch too.
    The options are `EmbedderConfig`'s fields.
    """

    def __init__(
        self,
        client: AsyncEmbedClient,
        store: Store,
        config: EmbedderConfig | None = None,
        **options: Any,
    ) -> None:
        self.client = client

        async def cohere(kwargs: dict[str, Any]) -> EmbedByTypeResponse:
            return await client.embed(**kwargs)

        self._core = Core(store, EmbedderConfig.of(config, options), cohere)

    async def embed(self, **call: Unpack[EmbedCall]) -> EmbedByTypeResponse:
        """Embed `texts` as `client.embed` would, answering from the cache where allowed."""
        tenant, kwargs = arguments(call)
        mode, tenant = self._core.resolve(tenant)
        return await self._core.run(mode, tenant, kwargs)


class CachedEmbedderSync(_Embedder):
    """A drop-in cache in front of `cohere.ClientV2.embed`, for code without an event loop.

    The stores are asynchronous, so this embedder owns a private event loop on a daemon thread:
    each `embed` runs the same logic as `CachedEmbedder` there and blocks until it is done.
    Cohere's blocking calls run on a thread pool of `threads` workers (chunks of one call still
    at most `max_concurrency` at a time). The decision and the tenant are read in the calling
    thread, where the request's context lives. The store is owned: use it for this embedder
    only (a Redis client is bound to the loop it first ran on), and `close()` closes it.
    """

    def __init__(
        self,
        client: SyncEmbedClient,
        store: Store,
        config: EmbedderConfig | None = None,
        *,
        threads: int = 8,
        **options: Any,
    ) -> None:
        if threads < 1:
            raise ValueError("threads must be positive")
        resolved = EmbedderConfig.of(config, options)
        self.client = client
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cachegate-embed")
        pool = self._pool

        async def cohere(kwargs: dict[str, Any]) -> EmbedByTypeResponse:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(pool, functools.partial(client.embed, **kwargs))

        self._core = Core(store, resolved, cohere)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="cachegate-embed-loop", daemon=True
        )
        self._thread.start()
        self._closed = False

    def embed(self, **call: Unpack[EmbedCall]) -> EmbedByTypeResponse:
        """Embed `texts` as `client.embed` would, answering from the cache where allowed.

        The decision and the tenant are read here, in the calling thread."""
        tenant, kwargs = arguments(call)
        mode, tenant = self._core.resolve(tenant)
        return self._submit(self._core.run(mode, tenant, kwargs))

    def _submit(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coroutine.close()
            raise RuntimeError("CachedEmbedderSync is closed")
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise RuntimeError("embed() called from the embedder's own loop thread")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def close(self) -> None:
        """Close the store, stop the private loop and the thread pool. Idempotent."""
        if self._closed:
            return
        try:
            self._submit(self._core.store.aclose())
        finally:
            self._closed = True
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()
            self._pool.shutdown(wait=True)

    def __enter__(self) -> CachedEmbedderSync:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
