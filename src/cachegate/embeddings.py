"""The L2 cache: Cohere embeddings per text, batch-aware, model-aware, compact, tenant-scoped.

`CachedEmbedder` wraps `cohere.AsyncClientV2` and `CachedEmbedderSync` wraps `cohere.ClientV2`;
both take the client's `embed(...)` arguments and return the SDK's own `EmbedByTypeResponse`,
so adopting the cache changes one line. Needs the `cachegate[cohere]` extra.

One call: each distinct text gets one key per embedding type (`vector_key`); all keys are read
in one `get_many`; the texts not hit go to Cohere in chunks of at most 96, a bounded number at a
time; the new vectors are written in one `set_many` with an absolute TTL; the result lists the
vectors in the caller's order. The request's `Decision.l2` (or the constructor's `mode` outside
a CacheGate request) picks off, shadow or serve. The cache never turns a good call into an
error: store failures are misses; Cohere's own errors reach the caller unchanged.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

from cohere.types import (
    ApiMeta,
    ApiMetaApiVersion,
    ApiMetaBilledUnits,
    EmbedByTypeResponse,
    EmbedByTypeResponseEmbeddings,
)

from cachegate.keys import KEY_SCHEMA_VERSION, KeySpace, Normalization, normalize_text
from cachegate.metrics import Metrics
from cachegate.rollout import Mode, Rollout, current_decision, current_tenant
from cachegate.store.base import Store, digest_secret_of
from cachegate.vectors import (
    CorruptVector,
    DType,
    Vector,
    bit_agreement,
    cosine_similarity,
    decode_vector,
    encode_vector,
    widen_for_float16,
)

__all__ = [
    "DEFAULT_COST_PER_CALL",
    "DEFAULT_THRESHOLD",
    "DEFAULT_TTL",
    "MAX_TEXTS_PER_CALL",
    "AsyncEmbedClient",
    "CachedEmbedder",
    "CachedEmbedderSync",
    "EmbedderStats",
    "SyncEmbedClient",
    "UnexpectedResponse",
    "vector_key",
]

log = logging.getLogger("cachegate.embeddings")

PROVIDER = "cohere"
LAYER = "embedding"
MAX_TEXTS_PER_CALL = 96
"""Cohere's limit of texts per embed call (the SDK does not enforce it; the API answers 400)."""
DEFAULT_TTL = 3600.0
DEFAULT_COST_PER_CALL = 0.002
"""Dollars per avoided Cohere call, the original service's estimate."""
DEFAULT_THRESHOLD = 0.999
"""Shadow comparisons at or above this similarity are a match (float32 storage)."""

KEYED_OPTIONS = ("max_tokens",)
"""Extra `embed` arguments that change the vectors: part of the key."""
FORWARDED_OPTIONS = ("priority", "request_options")
"""Extra `embed` arguments that do not change the vectors: passed on, not keyed."""

_INT_DTYPES = {
    "int8": DType.INT8,
    "uint8": DType.UINT8,
    "binary": DType.BINARY,
    "ubinary": DType.UBINARY,
}
CACHEABLE_TYPES = ("float", *_INT_DTYPES)
"""Embedding types the cache stores; a call asking for another (`base64`) bypasses it."""

Scope = Literal["tenant", "global"]
Storage = Literal["float32", "float16"]
T = TypeVar("T")


class AsyncEmbedClient(Protocol):
    """What `CachedEmbedder` needs: `cohere.AsyncClientV2` or anything with its `embed`."""

    @property
    def embed(self) -> Callable[..., Awaitable[EmbedByTypeResponse]]:
        """The client's `embed` coroutine function."""
        ...


class SyncEmbedClient(Protocol):
    """What `CachedEmbedderSync` needs: `cohere.ClientV2` or anything with its `embed`."""

    @property
    def embed(self) -> Callable[..., EmbedByTypeResponse]:
        """The client's blocking `embed` method."""
        ...


class UnexpectedResponse(Exception):
    """Cohere answered 2xx without the vectors asked for (a missing type or a wrong count)."""


@dataclass
class EmbedderStats:
    """Counters of one embedder, kept whether or not Prometheus metrics are given.

    Lookups count distinct texts of a call (duplicates inside a call are one lookup).
    `tokens_avoided` is estimated: each served hit counts the billed input tokens per text seen
    so far (`billed_tokens / texts_embedded`); `cost_avoided` is `calls_avoided` times the cost
    per call; `seconds_avoided` is `calls_avoided` times the mean Cohere call duration seen.
    """

    calls: int = 0
    bypassed: int = 0
    hits: int = 0
    misses: int = 0
    shadow_hits: int = 0
    shadow_misses: int = 0
    matches: int = 0
    mismatches: int = 0
    comparison_errors: int = 0
    corrupt: int = 0
    store_errors: int = 0
    cohere_calls: int = 0
    cohere_errors: int = 0
    texts_embedded: int = 0
    billed_tokens: float = 0.0
    cohere_seconds: float = 0.0
    calls_avoided: int = 0
    tokens_avoided: float = 0.0
    cost_avoided: float = 0.0
    seconds_avoided: float = 0.0

    @property
    def tokens_per_text(self) -> float:
        """Mean billed input tokens per text Cohere embedded (0 before the first call)."""
        return self.billed_tokens / self.texts_embedded if self.texts_embedded else 0.0

    @property
    def seconds_per_call(self) -> float:
        """Mean duration of a successful Cohere call (0 before the first one)."""
        return self.cohere_seconds / self.cohere_calls if self.cohere_calls else 0.0

    @property
    def hit_rate(self) -> float:
        """Served hits over served lookups (0 before any)."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0


def _encoded(part: str) -> bytes:
    """One length-prefixed part, exactly as `keys.digest` encodes it."""
    data = part.encode("utf-8", "surrogatepass")
    return len(data).to_bytes(8, "big") + data


class VectorKeys:
    """The keys of one call's texts for one embedding type.

    Everything but the text is encoded once, so a batch of 96 texts costs 96 short hashes; the
    keys equal `keys.digest` over the same parts.
    """

    def __init__(
        self,
        namespace: str,
        *,
        model: str,
        input_type: str,
        embedding_type: str,
        tenant: str | None,
        output_dimension: int | None = None,
        truncate: str | None = None,
        max_tokens: int | None = None,
        normalization: Normalization = Normalization.EXACT,
        provider: str = PROVIDER,
        secret: bytes | None = None,
    ) -> None:
        self._keyspace = KeySpace(namespace, secret)

        def optional(value: object) -> str:
            return "" if value is None else f"={value}"

        parts = (
            "vector",
            str(KEY_SCHEMA_VERSION),
            namespace,
            provider,
            model,
            input_type,
            embedding_type,
            optional(output_dimension),
            optional(truncate),
            optional(max_tokens),
            str(normalization.value),
            "global" if tenant is None else "t=" + tenant,
        )
        self._head = b"".join(_encoded(part) for part in parts)
        self._prefix = f"{namespace}:v:"
        self.normalization = normalization

    def key(self, normalized_text: str) -> str:
        """The key of a text already normalised with `self.normalization`."""
        return self._prefix + self._keyspace.digest_bytes(self._head + _encoded(normalized_text))


def vector_key(
    namespace: str,
    *,
    model: str,
    input_type: str,
    embedding_type: str,
    text: str,
    tenant: str | None,
    output_dimension: int | None = None,
    truncate: str | None = None,
    max_tokens: int | None = None,
    normalization: Normalization = Normalization.EXACT,
    provider: str = PROVIDER,
    secret: bytes | None = None,
) -> str:
    """The store key of one text's vector of one embedding type.

    `tenant=None` is the global scope. The text is normalised first and only digested, like the
    tenant (an HMAC with `secret`); an option left out and an option given never encode alike.
    """
    keys = VectorKeys(
        namespace,
        model=model,
        input_type=input_type,
        embedding_type=embedding_type,
        tenant=tenant,
        output_dimension=output_dimension,
        truncate=truncate,
        max_tokens=max_tokens,
        normalization=normalization,
        provider=provider,
        secret=secret,
    )
    return keys.key(normalize_text(text, normalization))


@dataclass(frozen=True, slots=True)
class _Call:
    """One `embed` call, planned: distinct texts, their keys, and the caller's positions."""

    texts: list[str]
    types: tuple[str, ...]
    options: dict[str, Any]
    positions: list[int]
    """For each caller position, the index of its distinct text."""
    unique: list[str]
    """Distinct texts as sent to Cohere (the first original of each)."""
    keys: list[list[str]]
    """For each distinct text, one key per type (empty when the cache is not used)."""
    output_dimension: int | None


@dataclass
class _Fresh:
    """What Cohere returned for some distinct texts of a call."""

    vectors: dict[int, dict[str, list[Any]]] = field(default_factory=dict)
    responses: list[EmbedByTypeResponse] = field(default_factory=list)
    billed_tokens: float = 0.0
    error: Exception | None = None


class _Core:
    """The cache logic shared by the async and the sync embedder; `_cohere` does the I/O."""

    def __init__(
        self,
        store: Store,
        *,
        namespace: str,
        mode: Mode,
        rollout: Rollout | None,
        key_secret: bytes | None,
        scope: Scope,
        tenant: Callable[[], str | None] | None,
        normalization: Normalization,
        ttl: float,
        storage: Storage,
        batch_size: int,
        max_concurrency: int,
        shadow_threshold: float | None,
        cost_per_call: float,
        metrics: Metrics | None,
        clock: Callable[[], float],
    ) -> None:
        KeySpace(namespace)
        if scope not in ("tenant", "global"):
            raise ValueError(f"scope must be 'tenant' or 'global', not {scope!r}")
        if storage not in ("float32", "float16"):
            raise ValueError(f"storage must be 'float32' or 'float16', not {storage!r}")
        if not 1 <= batch_size <= MAX_TEXTS_PER_CALL:
            raise ValueError(f"batch_size must be between 1 and {MAX_TEXTS_PER_CALL}")
        if max_concurrency < 1 or ttl <= 0 or cost_per_call < 0:
            raise ValueError("max_concurrency and ttl must be positive, cost_per_call >= 0")
        threshold = DEFAULT_THRESHOLD if shadow_threshold is None else shadow_threshold
        if not 0.0 <= threshold <= 1.0:
            raise ValueError("shadow_threshold must be in [0, 1]")
        self.store = store
        self.namespace = namespace
        self.mode = Mode(mode)
        self.rollout = rollout
        self.secret = digest_secret_of(store, key_secret)
        KeySpace(namespace, self.secret)
        self.scope: Scope = scope
        self.tenant_of = tenant
        self.normalization = normalization
        self.ttl = ttl
        self.storage: Storage = storage
        self.batch_size = batch_size
        self.max_concurrency = max_concurrency
        self.threshold = threshold
        self.float_threshold = threshold if storage == "float32" else widen_for_float16(threshold)
        self.cost_per_call = cost_per_call
        self.metrics = metrics
        self.clock = clock
        self.stats = EmbedderStats()
        self._warned_no_tenant = False

    async def _cohere(self, kwargs: dict[str, Any]) -> EmbedByTypeResponse:
        raise NotImplementedError

    def resolve(self, tenant: str | None) -> tuple[Mode, str | None]:
        """The call's mode and tenant, read in the caller's context (contextvars live there).

        Inside a CacheGate request for the same tenant the request's decision holds; anywhere
        else (a background job, a route without a policy, another tenant) `rollout` decides for
        the call's tenant, kill switch first; the constructor's `mode` only without a rollout.
        """
        if tenant is None and self.scope == "tenant" and self.tenant_of is not None:
            try:
                tenant = self.tenant_of()
            except Exception as error:
                log.warning("embedding cache: tenant callable failed: %s", type(error).__name__)
        request_tenant = current_tenant()
        if tenant is None and self.scope == "tenant":
            tenant = request_tenant
        decision = current_decision()
        if decision is not None and (self.rollout is None or tenant == request_tenant):
            return decision.l2, tenant
        if self.rollout is not None:
            return self.rollout.decide(tenant if tenant is not None else request_tenant).l2, tenant
        return self.mode, tenant

    async def run(
        self, mode: Mode, tenant: str | None, kwargs: dict[str, Any]
    ) -> EmbedByTypeResponse:
        """Answer one `embed` call in `mode` for `tenant`."""
        self.stats.calls += 1
        texts = kwargs.get("texts")
        types = _types(kwargs.get("embedding_types"))
        if not isinstance(texts, list | tuple) or types is None or not _cacheable(texts, kwargs):
            self.stats.bypassed += 1
            return await self._timed_cohere(kwargs)
        if mode is not Mode.OFF and self.scope == "tenant" and tenant is None:
            self._no_tenant()
            mode = Mode.OFF
        if mode is Mode.OFF:
            call = self._plan(list(texts), types, kwargs, None, use_keys=False)
            fresh = await self._fetch(call, list(range(len(call.unique))))
            if fresh.error is not None:
                raise fresh.error
            return self._respond(call, {}, fresh)
        call = self._plan(list(texts), types, kwargs, tenant, use_keys=True)
        return await self._cached(call, mode)

    def _no_tenant(self) -> None:
        self.stats.bypassed += 1
        if not self._warned_no_tenant:
            self._warned_no_tenant = True
            log.warning(
                "embedding cache bypassed: scope='tenant' but no tenant was given "
                "(pass tenant= or a tenant callable, or choose scope='global' explicitly)"
            )

    def _plan(
        self,
        texts: list[str],
        types: tuple[str, ...],
        kwargs: dict[str, Any],
        tenant: str | None,
        *,
        use_keys: bool,
    ) -> _Call:
        options = {name: value for name, value in kwargs.items() if name != "texts"}
        dimension = kwargs.get("output_dimension")
        output_dimension = dimension if isinstance(dimension, int) else None
        index: dict[str, int] = {}
        positions: list[int] = []
        unique: list[str] = []
        keys: list[list[str]] = []
        builders = []
        if use_keys:
            builders = [
                VectorKeys(
                    self.namespace,
                    model=kwargs["model"],
                    input_type=kwargs["input_type"],
                    embedding_type=kind,
                    tenant=None if self.scope == "global" else tenant,
                    output_dimension=output_dimension,
                    truncate=kwargs.get("truncate"),
                    max_tokens=kwargs.get("max_tokens"),
                    normalization=self.normalization,
                    secret=self.secret,
                )
                for kind in types
            ]
        for text in texts:
            identity = normalize_text(text, self.normalization) if use_keys else text
            slot = index.get(identity)
            if slot is None:
                slot = index[identity] = len(unique)
                unique.append(text)
                if use_keys:
                    keys.append([builder.key(identity) for builder in builders])
            positions.append(slot)
        return _Call(texts, types, options, positions, unique, keys, output_dimension)

    async def _cached(self, call: _Call, mode: Mode) -> EmbedByTypeResponse:
        """Serve or shadow: one read, Cohere for what is needed, one write."""
        flat = [key for keys in call.keys for key in keys]
        stored = await self._read(flat)
        cached: dict[int, dict[str, list[Any]]] = {}
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
                self._count_shadow(hit_count, miss_count)
            self._compare(call, cached, fresh)
            return self._respond(call, {}, fresh)
        if stored is None:  # as in L1: a bypass for `store_error`, not misses
            self._bypass_store_error()
        else:
            self._count_serve(call, hit_count, miss_count)
        self._as_stored(fresh)
        return self._respond(call, cached, fresh, whole=False)

    def _as_stored(self, fresh: _Fresh) -> None:
        """Give fresh float vectors the precision they are stored in, so a text gets the same
        numbers from a miss as from every later hit (Cohere's JSON floats parse as float64)."""
        for vectors in fresh.vectors.values():
            values = vectors.get("float")
            if values is not None:
                vectors["float"] = decode_vector(self._encode("float", values)).values

    def _bypass_store_error(self) -> None:
        self.stats.bypassed += 1
        if self.metrics is not None:
            self.metrics.bypasses.labels("store_error").inc()

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

    async def _decode(
        self, call: _Call, stored: list[bytes | None]
    ) -> dict[int, dict[str, list[Any]]]:
        """Decode every text's vectors; a text is a hit when all its types decode and agree."""
        hits: dict[int, dict[str, list[Any]]] = {}
        corrupt: list[str] = []
        width = len(call.types)
        for i, keys in enumerate(call.keys):
            raw = stored[i * width : (i + 1) * width]
            vectors: dict[str, list[Any]] = {}
            for kind, key, data in zip(call.types, keys, raw, strict=True):
                if data is None:
                    continue
                try:
                    vectors[kind] = self._check(kind, decode_vector(data), call.output_dimension)
                except CorruptVector:
                    corrupt.append(key)
            if len(vectors) == width and _consistent(vectors):
                hits[i] = vectors
            elif len(vectors) == width:
                corrupt.extend(keys)
        if corrupt:
            await self._drop(corrupt)
        return hits

    @staticmethod
    def _check(kind: str, vector: Vector, output_dimension: int | None) -> list[Any]:
        """A decoded vector's values if it is what a key of `kind` must hold."""
        expected = {DType.FLOAT32, DType.FLOAT16} if kind == "float" else {_INT_DTYPES[kind]}
        if vector.dtype not in expected:
            raise CorruptVector(f"{vector.dtype.name} stored under a {kind} key")
        if not vector.values:
            raise CorruptVector("empty vector")
        if output_dimension is not None:
            length = output_dimension // 8 if kind in ("binary", "ubinary") else output_dimension
            if len(vector.values) != length:
                raise CorruptVector(f"{len(vector.values)} values, expected {length}")
        return vector.values

    async def _drop(self, keys: list[str]) -> None:
        """Count and delete corrupt entries (best effort: a failure only leaves them to expire)."""
        self.stats.corrupt += len(keys)
        if self.metrics is not None:
            self.metrics.corrupt_entries.labels(LAYER).inc(len(keys))
        for key in keys:
            try:
                await self.store.delete(key)
            except Exception as error:
                self._store_failed("delete", error)
                return

    async def _fetch(self, call: _Call, wanted: list[int]) -> _Fresh:
        """Embed the distinct texts `wanted`, in chunks, at most `max_concurrency` at a time.

        After the first failure no further chunk starts; chunks already running finish and
        their vectors are kept (they are correct for their keys). The first error is returned
        for the caller to raise once the good vectors are written.
        """
        fresh = _Fresh()
        chunks = [wanted[i : i + self.batch_size] for i in range(0, len(wanted), self.batch_size)]
        if not chunks:
            return fresh
        gate = asyncio.Semaphore(self.max_concurrency)

        async def run(chunk: list[int]) -> None:
            async with gate:
                if fresh.error is not None:
                    return
                kwargs = {**call.options, "texts": [call.unique[i] for i in chunk]}
                try:
                    response = await self._timed_cohere(kwargs)
                    by_type = _vectors_of(response, call.types, len(chunk))
                except Exception as error:
                    self.stats.cohere_errors += 1
                    if fresh.error is None:
                        fresh.error = error
                    return
                for offset, i in enumerate(chunk):
                    fresh.vectors[i] = {kind: by_type[kind][offset] for kind in call.types}
                fresh.responses.append(response)
                tokens = _billed_tokens(response)
                fresh.billed_tokens += tokens
                self.stats.billed_tokens += tokens
                self.stats.texts_embedded += len(chunk)

        await asyncio.gather(*(run(chunk) for chunk in chunks))
        return fresh

    async def _timed_cohere(self, kwargs: dict[str, Any]) -> EmbedByTypeResponse:
        started = self.clock()
        response = await self._cohere(kwargs)
        self.stats.cohere_seconds += self.clock() - started
        self.stats.cohere_calls += 1
        return response

    async def _write(self, call: _Call, fresh: _Fresh) -> None:
        """Write every fresh vector in one `set_many`; a vector that cannot be packed is skipped."""
        items: list[tuple[str, bytes]] = []
        for i, vectors in fresh.vectors.items():
            for kind, key in zip(call.types, call.keys[i], strict=True):
                try:
                    items.append((key, self._encode(kind, vectors[kind])))
                except ValueError:
                    continue
        if not items:
            return
        try:
            await self.store.set_many(items, self.ttl)
        except Exception as error:
            self._store_failed("set_many", error)
            return
        if self.metrics is not None:
            sizes = self.metrics.entry_size.labels(LAYER)
            for _, value in items:
                sizes.observe(len(value))

    def _encode(self, kind: str, values: list[Any]) -> bytes:
        if kind != "float":
            return encode_vector(values, _INT_DTYPES[kind])
        if self.storage == "float16":
            try:
                return encode_vector(values, DType.FLOAT16)
            except ValueError:
                pass
        return encode_vector(values, DType.FLOAT32)

    def _store_failed(self, operation: str, error: Exception) -> None:
        self.stats.store_errors += 1
        log.warning("embedding cache %s failed open: %s", operation, type(error).__name__)

    def _count_serve(self, call: _Call, hits: int, misses: int) -> None:
        stats = self.stats
        stats.hits += hits
        stats.misses += misses
        total = len(call.unique)
        avoided = math.ceil(total / self.batch_size) - math.ceil(misses / self.batch_size)
        tokens = hits * stats.tokens_per_text
        cost = avoided * self.cost_per_call
        stats.calls_avoided += avoided
        stats.tokens_avoided += tokens
        stats.cost_avoided += cost
        stats.seconds_avoided += avoided * stats.seconds_per_call
        metrics = self.metrics
        if metrics is not None:
            metrics.hits.labels(LAYER).inc(hits)
            metrics.misses.labels(LAYER).inc(misses)
            metrics.calls_avoided.labels(LAYER).inc(avoided)
            metrics.tokens_avoided.labels(LAYER).inc(tokens)
            metrics.cost_avoided.labels(LAYER).inc(cost)

    def _count_shadow(self, hits: int, misses: int) -> None:
        self.stats.shadow_hits += hits
        self.stats.shadow_misses += misses
        if self.metrics is not None:
            self.metrics.shadow_lookups.labels(LAYER, "hit").inc(hits)
            self.metrics.shadow_lookups.labels(LAYER, "miss").inc(misses)

    def _compare(self, call: _Call, cached: dict[int, dict[str, list[Any]]], fresh: _Fresh) -> None:
        """Compare each cached text with its fresh vectors: match, mismatch or error."""
        for i, vectors in cached.items():
            outcome = "match"
            try:
                for kind in call.types:
                    similarity = _similarity(kind, vectors[kind], fresh.vectors[i][kind])
                    limit = self.float_threshold if kind == "float" else self.threshold
                    if similarity < limit:
                        outcome = "mismatch"
            except ValueError:
                outcome = "error"
            if outcome == "match":
                self.stats.matches += 1
            elif outcome == "mismatch":
                self.stats.mismatches += 1
            else:
                self.stats.comparison_errors += 1
            if self.metrics is not None:
                self.metrics.comparisons.labels(LAYER, "shadow", outcome).inc()

    def _respond(
        self,
        call: _Call,
        cached: dict[int, dict[str, list[Any]]],
        fresh: _Fresh,
        *,
        whole: bool = True,
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
        seen: set[int] = set()
        columns: dict[str, list[list[Any]]] = {kind: [] for kind in call.types}
        for slot in call.positions:
            vectors = cached.get(slot) or fresh.vectors[slot]
            for kind in call.types:
                vector = vectors[kind]
                columns[kind].append(list(vector) if slot in seen else vector)
            seen.add(slot)
        version = next(
            (r.meta.api_version for r in fresh.responses if r.meta and r.meta.api_version),
            ApiMetaApiVersion(version="2"),
        )
        return EmbedByTypeResponse(
            response_type="embeddings_by_type",
            id=str(uuid.uuid4()),
            embeddings=EmbedByTypeResponseEmbeddings.model_validate(columns),
            texts=list(call.texts),
            meta=ApiMeta(
                api_version=version,
                billed_units=ApiMetaBilledUnits(input_tokens=fresh.billed_tokens),
            ),
        )


_PLAIN_OPTIONS = frozenset(
    ("texts", "model", "input_type", "embedding_types", "output_dimension", "truncate")
)


def _cacheable(texts: list[Any] | tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether a call is plain text embedding with only options the cache understands."""
    return (
        len(texts) > 0
        and all(isinstance(text, str) for text in texts)
        and set(kwargs) <= _PLAIN_OPTIONS | set(KEYED_OPTIONS) | set(FORWARDED_OPTIONS)
        and isinstance(kwargs.get("model"), str)
        and isinstance(kwargs.get("input_type"), str)
        and isinstance(kwargs.get("output_dimension", 0), int)
        and isinstance(kwargs.get("truncate", ""), str)
        and isinstance(kwargs.get("max_tokens", 0), int)
    )


def _types(requested: object) -> tuple[str, ...] | None:
    """The distinct embedding types asked for (none given: float), or None if not cacheable."""
    if requested is None:
        return ("float",)
    if isinstance(requested, str) or not isinstance(requested, list | tuple) or not requested:
        return None
    types = tuple(dict.fromkeys(requested))
    if not all(isinstance(kind, str) and kind in CACHEABLE_TYPES for kind in types):
        return None
    return types


def _vectors_of(
    response: EmbedByTypeResponse, types: tuple[str, ...], count: int
) -> dict[str, list[Any]]:
    """Each asked type's vectors from a Cohere response, checked to be one per text."""
    embeddings = response.embeddings
    result: dict[str, list[Any]] = {}
    for kind in types:
        vectors = getattr(embeddings, "float_" if kind == "float" else kind, None)
        if not isinstance(vectors, list) or len(vectors) != count:
            raise UnexpectedResponse(f"expected {count} {kind} embeddings")
        result[kind] = vectors
    return result


def _billed_tokens(response: EmbedByTypeResponse) -> float:
    meta = response.meta
    if meta is None or meta.billed_units is None or meta.billed_units.input_tokens is None:
        return 0.0
    return float(meta.billed_units.input_tokens)


def _consistent(vectors: dict[str, list[Any]]) -> bool:
    """Whether a text's stored types agree on the dimension (binary packs 8 per byte)."""
    dimensions = {
        len(values) * (8 if kind in ("binary", "ubinary") else 1)
        for kind, values in vectors.items()
    }
    return len(dimensions) == 1


def _similarity(kind: str, cached: list[Any], fresh: list[Any]) -> float:
    """Cosine for float and int8 (uint8 centred on 128), bit agreement for binary types."""
    if kind in ("binary", "ubinary"):
        return bit_agreement(cached, fresh)
    if kind == "uint8":
        return cosine_similarity([x - 128 for x in cached], [y - 128 for y in fresh])
    return cosine_similarity(cached, fresh)


def _arguments(
    texts: Sequence[str],
    model: str,
    input_type: str,
    embedding_types: Sequence[str] | None,
    output_dimension: int | None,
    truncate: str | None,
    rest: dict[str, Any],
) -> dict[str, Any]:
    """The `embed` keyword arguments to pass on; options left as None are not sent."""
    kwargs: dict[str, Any] = {"texts": texts, "model": model, "input_type": input_type}
    optional = {
        "embedding_types": embedding_types,
        "output_dimension": output_dimension,
        "truncate": truncate,
    }
    kwargs.update({name: value for name, value in optional.items() if value is not None})
    kwargs.update(rest)
    return kwargs


class _AsyncCore(_Core):
    def __init__(self, client: AsyncEmbedClient, store: Store, **options: Any) -> None:
        super().__init__(store, **options)
        self.client = client

    async def _cohere(self, kwargs: dict[str, Any]) -> EmbedByTypeResponse:
        return await self.client.embed(**kwargs)


class _Embedder:
    """What both embedders expose besides `embed`."""

    _core: _Core

    @property
    def stats(self) -> EmbedderStats:
        """This embedder's counters."""
        return self._core.stats

    @property
    def shadow_threshold(self) -> float:
        """The similarity at or above which a shadow comparison of float vectors matches."""
        return self._core.float_threshold


class CachedEmbedder(_Embedder):
    """A drop-in cache in front of `cohere.AsyncClientV2.embed`.

    `await embedder.embed(texts=..., model=..., input_type=..., ...)` takes the client's
    arguments and returns its `EmbedByTypeResponse`. The tenant comes from `tenant=` on the call,
    else from the `tenant` callable (read in the caller's context), else from the CacheGate
    request being handled (`cachegate.rollout.current_tenant()`); with the default
    `scope="tenant"` a call without a tenant is not cached. `scope="global"` shares vectors
    across tenants and must be chosen explicitly. Pass the gate's `rollout` so calls outside a
    cached request (background jobs, other routes) follow the flags and the kill switch too;
    `mode` applies only without one. `key_secret` keys the digests (an `EncryptedStore` brings
    its own).
    """

    def __init__(
        self,
        client: AsyncEmbedClient,
        store: Store,
        *,
        namespace: str = "cachegate",
        mode: Mode = Mode.SERVE,
        rollout: Rollout | None = None,
        key_secret: bytes | None = None,
        scope: Scope = "tenant",
        tenant: Callable[[], str | None] | None = None,
        normalization: Normalization = Normalization.EXACT,
        ttl: float = DEFAULT_TTL,
        storage: Storage = "float32",
        batch_size: int = MAX_TEXTS_PER_CALL,
        max_concurrency: int = 4,
        shadow_threshold: float | None = None,
        cost_per_call: float = DEFAULT_COST_PER_CALL,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._core = _AsyncCore(
            client,
            store,
            namespace=namespace,
            mode=mode,
            rollout=rollout,
            key_secret=key_secret,
            scope=scope,
            tenant=tenant,
            normalization=normalization,
            ttl=ttl,
            storage=storage,
            batch_size=batch_size,
            max_concurrency=max_concurrency,
            shadow_threshold=shadow_threshold,
            cost_per_call=cost_per_call,
            metrics=metrics,
            clock=clock,
        )

    async def embed(
        self,
        *,
        texts: Sequence[str],
        model: str,
        input_type: str,
        embedding_types: Sequence[str] | None = None,
        output_dimension: int | None = None,
        truncate: str | None = None,
        tenant: str | None = None,
        **rest: Any,
    ) -> EmbedByTypeResponse:
        """Embed `texts` as `client.embed` would, answering from the cache where allowed."""
        mode, tenant = self._core.resolve(tenant)
        kwargs = _arguments(
            texts, model, input_type, embedding_types, output_dimension, truncate, rest
        )
        return await self._core.run(mode, tenant, kwargs)


class _ThreadedCore(_Core):
    def __init__(
        self, client: SyncEmbedClient, store: Store, pool: ThreadPoolExecutor, **options: Any
    ) -> None:
        super().__init__(store, **options)
        self.client = client
        self.pool = pool

    async def _cohere(self, kwargs: dict[str, Any]) -> EmbedByTypeResponse:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, functools.partial(self.client.embed, **kwargs))


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
        *,
        threads: int = 8,
        namespace: str = "cachegate",
        mode: Mode = Mode.SERVE,
        rollout: Rollout | None = None,
        key_secret: bytes | None = None,
        scope: Scope = "tenant",
        tenant: Callable[[], str | None] | None = None,
        normalization: Normalization = Normalization.EXACT,
        ttl: float = DEFAULT_TTL,
        storage: Storage = "float32",
        batch_size: int = MAX_TEXTS_PER_CALL,
        max_concurrency: int = 4,
        shadow_threshold: float | None = None,
        cost_per_call: float = DEFAULT_COST_PER_CALL,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if threads < 1:
            raise ValueError("threads must be positive")
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cachegate-embed")
        self._core = _ThreadedCore(
            client,
            store,
            self._pool,
            namespace=namespace,
            mode=mode,
            rollout=rollout,
            key_secret=key_secret,
            scope=scope,
            tenant=tenant,
            normalization=normalization,
            ttl=ttl,
            storage=storage,
            batch_size=batch_size,
            max_concurrency=max_concurrency,
            shadow_threshold=shadow_threshold,
            cost_per_call=cost_per_call,
            metrics=metrics,
            clock=clock,
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="cachegate-embed-loop", daemon=True
        )
        self._thread.start()
        self._closed = False

    def embed(
        self,
        *,
        texts: Sequence[str],
        model: str,
        input_type: str,
        embedding_types: Sequence[str] | None = None,
        output_dimension: int | None = None,
        truncate: str | None = None,
        tenant: str | None = None,
        **rest: Any,
    ) -> EmbedByTypeResponse:
        """Embed `texts` as `client.embed` would, answering from the cache where allowed."""
        mode, tenant = self._core.resolve(tenant)
        kwargs = _arguments(
            texts, model, input_type, embedding_types, output_dimension, truncate, rest
        )
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
