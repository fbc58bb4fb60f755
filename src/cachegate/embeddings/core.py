"""The L2 cache logic shared by both embedders: resolve the mode, read, embed, write, answer.

One call: each distinct text gets one key per embedding type; all keys are read in one
`get_many`; the texts not hit go to Cohere in chunks of at most `batch_size`, at most
`max_concurrency` at a time; the new vectors are written in one `set_many` with an absolute
TTL; the answer lists the vectors in the caller's order. The cache never turns a good call into
an error: store failures are misses; Cohere's own errors reach the caller unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from cohere.types import EmbedByTypeResponse

from cachegate.embeddings import codec
from cachegate.embeddings.accounting import COMPARED, Event, Tally
from cachegate.embeddings.cohere import billed_tokens, response, vectors_of
from cachegate.embeddings.config import EmbedderConfig
from cachegate.embeddings.plan import Call, cacheable_types, key_builders, plan
from cachegate.keys import KeySpace
from cachegate.rollout import Mode, current_decision, current_tenant
from cachegate.store.base import Store, digest_secret_of, metrics_of
from cachegate.vectors import CorruptVector, decode_vector

log = logging.getLogger("cachegate.embeddings")

Vectors = dict[str, list[Any]]
"""One text's vectors by embedding type."""
Cohere = Callable[[dict[str, Any]], Awaitable[EmbedByTypeResponse]]
"""One Cohere `embed` call with these keyword arguments."""


@dataclass
class _Fresh:
    """What Cohere returned for some distinct texts of a call."""

    vectors: dict[int, Vectors] = field(default_factory=dict)
    responses: list[EmbedByTypeResponse] = field(default_factory=list)
    billed_tokens: float = 0.0
    error: Exception | None = None


class Core:
    """One embedder's cache over `store`, calling Cohere through `cohere`, counting into
    `metrics` (the configured ones, else the store's, else the default)."""

    def __init__(self, store: Store, config: EmbedderConfig, cohere: Cohere) -> None:
        self.store = store
        self.secret = digest_secret_of(store, config.key_secret)
        KeySpace(config.namespace, self.secret)
        self.config = config
        self.metrics = metrics_of(store, config.metrics)
        self.tally = Tally(self.metrics)
        self._cohere = cohere
        self._warned_no_tenant = False

    def resolve(self, tenant: str | None) -> tuple[Mode, str | None]:
        """The call's mode and tenant, read in the caller's context (contextvars live there).

        Inside a CacheGate request for the same tenant the request's decision holds; anywhere
        else (a background job, a route without a policy, another tenant) `rollout` decides for
        the call's tenant, kill switch first; the configured `mode` only without a rollout.
        """
        config = self.config
        if tenant is None and config.scope == "tenant" and config.tenant is not None:
            try:
                tenant = config.tenant()
            except Exception as error:
                log.warning("embedding cache: tenant callable failed: %s", type(error).__name__)
        request_tenant = current_tenant()
        if tenant is None and config.scope == "tenant":
            tenant = request_tenant
        decision = current_decision()
        if decision is not None and (config.rollout is None or tenant == request_tenant):
            return decision.l2, tenant
        if config.rollout is not None:
            mode = config.rollout.decide(tenant if tenant is not None else request_tenant).l2
            return mode, tenant
        return config.mode, tenant

    async def run(
        self, mode: Mode, tenant: str | None, kwargs: dict[str, Any]
    ) -> EmbedByTypeResponse:
        """Answer one `embed` call in `mode` for `tenant`."""
        self.tally.count(Event.CALL)
        types = cacheable_types(kwargs)
        if types is None:
            self.tally.count(Event.UNCACHEABLE)
            return await self._timed_cohere(kwargs)
        if mode is not Mode.OFF and self.config.scope == "tenant" and tenant is None:
            self._no_tenant()
            mode = Mode.OFF
        if mode is Mode.OFF:
            call = plan(kwargs, types, None)
            fresh = await self._fetch(call, list(range(len(call.unique))))
            if fresh.error is not None:
                raise fresh.error
            return self._respond(call, {}, fresh)
        keys = key_builders(
            kwargs,
            types,
            namespace=self.config.namespace,
            tenant=None if self.config.scope == "global" else tenant,
            normalization=self.config.normalization,
            secret=self.secret,
        )
        return await self._cached(plan(kwargs, types, keys), mode)

    def _no_tenant(self) -> None:
        self.tally.count(Event.NO_TENANT)
        if not self._warned_no_tenant:
            self._warned_no_tenant = True
            log.warning(
                "embedding cache bypassed: scope='tenant' but no tenant was given "
                "(pass tenant= or a tenant callable, or choose scope='global' explicitly)"
            )

    async def _cached(self, call: Call, mode: Mode) -> EmbedByTypeResponse:
        """Serve or shadow: one read, Cohere for what is needed, one write."""
        stored = await self._read([key for keys in call.keys for key in keys])
        cached: dict[int, Vectors] = {}
        if stored is not None:
            cached = await self._decode(call, stored)
        hit_count = len(cached)
        miss_count = len(call.unique) - hit_count
        if mode is Mode.SERVE:
            wanted = [i for i in range(len(call.unique)) if i not in cached]
        else:
            wanted = list(range(len(call.unique)))
        fresh = await self._fetch(call, wanted)
        if stored is not None:
            await self._write(call, fresh)
        if fresh.error is not None:
            raise fresh.error
        if mode is Mode.SHADOW:
            if stored is not None:  # as in L1: a failed store lookup is no shadow lookup
                self.tally.count(Event.SHADOW_HIT, hit_count)
                self.tally.count(Event.SHADOW_MISS, miss_count)
            self._compare(cached, fresh)
            return self._respond(call, {}, fresh)
        if stored is None:  # as in L1: a bypass for `store_error`, not misses
            self.tally.count(Event.STORE_ERROR)
        else:
            self._count_served(call, hit_count, miss_count)
        self._as_stored(fresh)
        return self._respond(call, cached, fresh, whole=False)

    def _as_stored(self, fresh: _Fresh) -> None:
        """Give fresh float vectors the precision they are stored in, so a text gets the same
        numbers from a miss as from every later hit (Cohere's JSON floats parse as float64)."""
        for vectors in fresh.vectors.values():
            values = vectors.get("float")
            if values is not None:
                vectors["float"] = codec.as_stored(values, self.config.storage)

    async def _read(self, keys: list[str]) -> list[bytes | None] | None:
        """All keys in one `get_many`; None when the store failed (everything is a miss)."""
        try:
            values = await self.store.get_many(keys)
        except Exception as error:
            self._store_failed("get_many", error)
            return None
        if len(values) != len(keys):
            self._store_failed("get_many", ValueError("wrong number of values"))
            return None
        return values

    async def _decode(self, call: Call, stored: list[bytes | None]) -> dict[int, Vectors]:
        """Decode every text's vectors; a text is a hit when all its types decode and agree."""
        hits: dict[int, Vectors] = {}
        corrupt: list[str] = []
        width = len(call.types)
        types, dimension = call.types, call.output_dimension
        for i, keys in enumerate(call.keys):
            vectors: Vectors = {}
            for offset, kind in enumerate(types):
                data = stored[i * width + offset]
                if data is None:
                    continue
                try:
                    vectors[kind] = codec.check(kind, decode_vector(data), dimension)
                except CorruptVector:
                    corrupt.append(keys[offset])
            if len(vectors) == width and codec.consistent(vectors):
                hits[i] = vectors
            elif len(vectors) == width:
                corrupt.extend(keys)
        if corrupt:
            await self._drop(corrupt)
        return hits

    async def _drop(self, keys: list[str]) -> None:
        """Count and delete corrupt entries (best effort: a failure only leaves them to expire)."""
        self.tally.count(Event.CORRUPT, len(keys))
        for key in keys:
            try:
                await self.store.delete(key)
            except Exception as error:
                self._store_failed("delete", error)
                return

    async def _fetch(self, call: Call, wanted: list[int]) -> _Fresh:
        """Embed the distinct texts `wanted`, in chunks, at most `max_concurrency` at a time.

        After the first failure no further chunk starts; chunks already running finish and
        their vectors are kept (they are correct for their keys). The first error is returned
        for the caller to raise once the good vectors are written.
        """
        fresh = _Fresh()
        size = self.config.batch_size
        chunks = [wanted[i : i + size] for i in range(0, len(wanted), size)]
        if not chunks:
            return fresh
        gate = asyncio.Semaphore(self.config.max_concurrency)

        async def run(chunk: list[int]) -> None:
            async with gate:
                if fresh.error is not None:
                    return
                kwargs = {**call.options, "texts": [call.unique[i] for i in chunk]}
                try:
                    answer = await self._timed_cohere(kwargs)
                    by_type = vectors_of(answer, call.types, len(chunk))
                except Exception as error:
                    self.tally.count(Event.COHERE_ERROR)
                    if fresh.error is None:
                        fresh.error = error
                    return
                for offset, i in enumerate(chunk):
                    fresh.vectors[i] = {kind: by_type[kind][offset] for kind in call.types}
                fresh.responses.append(answer)
                tokens = billed_tokens(answer)
                fresh.billed_tokens += tokens
                self.tally.count(Event.BILLED_TOKENS, tokens)
                self.tally.count(Event.TEXT_EMBEDDED, len(chunk))

        await asyncio.gather(*(run(chunk) for chunk in chunks))
        return fresh

    async def _timed_cohere(self, kwargs: dict[str, Any]) -> EmbedByTypeResponse:
        clock = self.config.clock
        started = clock()
        answer = await self._cohere(kwargs)
        self.tally.count(Event.COHERE_SECONDS, clock() - started)
        self.tally.count(Event.COHERE_CALL)
        return answer

    async def _write(self, call: Call, fresh: _Fresh) -> None:
        """Write every fresh vector in one `set_many`; a vector that cannot be packed is skipped."""
        items: list[tuple[str, bytes]] = []
        for i, vectors in fresh.vectors.items():
            for kind, key in zip(call.types, call.keys[i], strict=True):
                try:
                    items.append((key, codec.encode(kind, vectors[kind], self.config.storage)))
                except ValueError:
                    continue
        if not items:
            return
        try:
            await self.store.set_many(items, self.config.ttl)
        except Exception as error:
            self._store_failed("set_many", error)
            return
        self.tally.stored(len(value) for _, value in items)

    def _store_failed(self, operation: str, error: Exception) -> None:
        self.tally.count(Event.STORE_FAILURE)
        log.warning("embedding cache %s failed open: %s", operation, type(error).__name__)

    def _count_served(self, call: Call, hits: int, misses: int) -> None:
        """Served lookups and the work they avoided (tokens and seconds as seen so far)."""
        size = self.config.batch_size
        avoided = math.ceil(len(call.unique) / size) - math.ceil(misses / size)
        tally = self.tally
        tokens_per_text = tally.per_unit(Event.BILLED_TOKENS, Event.TEXT_EMBEDDED)
        seconds_per_call = tally.per_unit(Event.COHERE_SECONDS, Event.COHERE_CALL)
        for event, amount in (
            (Event.HIT, hits),
            (Event.MISS, misses),
            (Event.CALL_AVOIDED, avoided),
            (Event.TOKENS_AVOIDED, hits * tokens_per_text),
            (Event.COST_AVOIDED, avoided * self.config.cost_per_call),
            (Event.SECONDS_AVOIDED, avoided * seconds_per_call),
        ):
            tally.count(event, amount)

    def _compare(self, cached: dict[int, Vectors], fresh: _Fresh) -> None:
        """Compare each cached text with its fresh vectors; count each `Outcome` as L1 does."""
        config = self.config
        for i, vectors in cached.items():
            outcome = codec.compare(
                vectors,
                fresh.vectors[i],
                threshold=config.threshold,
                float_threshold=config.float_threshold,
            )
            self.tally.count(COMPARED[outcome])

    def _respond(
        self, call: Call, cached: dict[int, Vectors], fresh: _Fresh, *, whole: bool = True
    ) -> EmbedByTypeResponse:
        """The SDK's response type with every caller position's vectors, in the caller's order.

        When a single Cohere response already answers the whole call as asked (no hits, no
        duplicates) and `whole` allows it, that response itself is returned.
        """
        if (
            whole
            and not cached
            and len(fresh.responses) == 1
            and len(call.unique) == len(call.texts)
        ):
            return fresh.responses[0]
        rows = [cached.get(slot) or fresh.vectors[slot] for slot in call.positions]
        columns = {kind: [row[kind] for row in rows] for kind in call.types}
        if len(call.unique) != len(call.texts):  # a repeated text gets lists of its own
            seen: set[int] = set()
            for position, slot in enumerate(call.positions):
                if slot in seen:
                    for column in columns.values():
                        column[position] = list(column[position])
                seen.add(slot)
        return response(columns, list(call.texts), fresh.responses, fresh.billed_tokens)
