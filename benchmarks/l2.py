"""L2: embedding caches on batches of 96 texts at 0 %, 50 % and 100 % hits.

Four caches side by side on the same private Redis, each in front of the same Cohere-compatible
server (the test suite's `tests/support/cohere_server.py`, in its own process) through the real
`cohere.AsyncClientV2`:

- floor: a hand-written minimum: key = SHA-256 of the text, one MGET, packed float32 decoded
  with `array('f')`; misses from Cohere, written back in one pipeline with a TTL.
- CacheGate `CachedEmbedder` over `RedisStore`.
- LangChain `CacheBackedEmbeddings` over `langchain_community.storage.RedisStore` (SHA-256 key
  encoder; its async path runs the sync client's MGET in a thread, as shipped).
- RedisVL `EmbeddingsCache` (`amget` / `amset`), with the same TTL and without one (with a TTL
  it refreshes each hit's expiry with one EXPIRE per hit).

Times are of one whole batch. Round trips are counted in a separate, untimed pass.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import subprocess
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks.harness import (
    REPO,
    RoundTrips,
    Samples,
    command_calls,
    pinned,
    python_executable,
    stop_process,
    time_async,
)

MODEL = "embed-english-v3.0"
INPUT_TYPE = "search_document"
DIMENSION = 1024
BATCH = 96
TTL = 3600
TENANT = "ws-bench-1"
HIT_RATES = (0, 50, 100)

_counter = itertools.count()


def fresh_texts(count: int, label: str) -> list[str]:
    """Texts never embedded before in this run (similar length to the hot ones)."""
    return [
        f"Session note {label}-{next(_counter):08d}: the client described sleep, work stress "
        "and the breathing exercise they tried this week."
        for _ in range(count)
    ]


class CohereProcess:
    """`tests/support/cohere_server.py` in a child process, pinned away from the benchmark's CPU."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> CohereProcess:
        code = (
            "import sys\n"
            f"sys.path.insert(0, {str(REPO / 'tests')!r})\n"
            "from support.cohere_server import CohereServer\n"
            f"server = CohereServer(default_dimension={DIMENSION}).start()\n"
            "print(server.url, flush=True)\n"
            "sys.stdin.read()\n"
        )
        self.process = subprocess.Popen(
            pinned([python_executable(), "-c", code], 1),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        if not self.url.startswith("http"):
            raise RuntimeError("the Cohere stand-in did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            if self.process.stdin is not None:
                self.process.stdin.close()
            stop_process(self.process)


# --- the systems ---------------------------------------------------------------------------------

Embed = Callable[[list[str]], Awaitable[Any]]


async def _cohere_floats(cohere_client: Any, texts: list[str]) -> list[list[float]]:
    response = await cohere_client.embed(
        texts=texts, model=MODEL, input_type=INPUT_TYPE, embedding_types=["float"]
    )
    vectors: list[list[float]] = response.embeddings.float_
    return vectors


@dataclass
class System:
    name: str
    embed: Embed
    prefix: str
    close: Callable[[], Awaitable[None]]


def floor_system(redis_url: str, namespace: str, cohere_client: Any) -> System:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(redis_url)
    prefix = f"{namespace}-floor:"

    async def embed(texts: list[str]) -> list[list[float]]:
        keys = [prefix + hashlib.sha256(text.encode()).hexdigest() for text in texts]
        values = await client.mget(keys)
        result: list[list[float]] = [[] for _ in texts]
        missing: list[int] = []
        for i, value in enumerate(values):
            if not isinstance(value, bytes):
                missing.append(i)
            else:
                packed = array("f")
                packed.frombytes(value)
                result[i] = packed.tolist()
        if missing:
            vectors = await _cohere_floats(cohere_client, [texts[i] for i in missing])
            pipe = client.pipeline(transaction=False)
            for i, vector in zip(missing, vectors, strict=True):
                pipe.set(keys[i], array("f", vector).tobytes(), ex=TTL)
                result[i] = vector
            await pipe.execute()
        return result

    return System("raw MGET + decode (floor)", embed, prefix, client.aclose)


def cachegate_system(redis_url: str, namespace: str, cohere_client: Any) -> System:
    from cachegate.embeddings import CachedEmbedder
    from cachegate.store import RedisStore

    store = RedisStore.from_url(redis_url, deadline=1.0)
    name = f"{namespace}-ce"
    embedder = CachedEmbedder(cohere_client, store, namespace=name, ttl=TTL)

    async def embed(texts: list[str]) -> Any:
        return await embedder.embed(
            texts=texts,
            model=MODEL,
            input_type=INPUT_TYPE,
            embedding_types=["float"],
            tenant=TENANT,
        )

    return System("CacheGate CachedEmbedder", embed, name + ":", store.aclose)


def langchain_system(redis_url: str, namespace: str, cohere_client: Any) -> System:
    import redis
    from langchain_classic.embeddings import CacheBackedEmbeddings
    from langchain_community.storage import RedisStore as LangChainRedisStore
    from langchain_core.embeddings import Embeddings

    class CohereSDKEmbeddings(Embeddings):  # type: ignore[misc]
        """The same Cohere client behind LangChain's `Embeddings` interface (async only)."""

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            raise NotImplementedError("the benchmark uses the async path")

        def embed_query(self, text: str) -> list[float]:
            raise NotImplementedError("the benchmark uses the async path")

        async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
            return await _cohere_floats(cohere_client, texts)

    client = redis.Redis.from_url(redis_url)
    store_namespace = f"{namespace}-lc"
    store = LangChainRedisStore(client=client, ttl=TTL, namespace=store_namespace)
    cached = CacheBackedEmbeddings.from_bytes_store(
        CohereSDKEmbeddings(), store, namespace=MODEL, key_encoder="sha256"
    )

    async def embed(texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = await cached.aembed_documents(texts)
        return vectors

    async def close() -> None:
        client.close()

    return System("LangChain CacheBackedEmbeddings", embed, store_namespace + "/", close)


def redisvl_system(
    redis_url: str, namespace: str, cohere_client: Any, *, ttl: int | None = TTL
) -> System:
    import redis.asyncio
    from redisvl.extensions.cache.embeddings import EmbeddingsCache

    client = redis.asyncio.Redis.from_url(redis_url)
    name = f"{namespace}-rvl" + ("" if ttl else "nottl")
    cache = EmbeddingsCache(name=name, ttl=ttl, async_redis_client=client)

    async def embed(texts: list[str]) -> list[list[float]]:
        found = await cache.amget(texts, model_name=MODEL)
        result: list[list[float]] = [[] for _ in texts]
        missing: list[int] = []
        for i, entry in enumerate(found):
            if entry is None:
                missing.append(i)
            else:
                result[i] = entry["embedding"]
        if missing:
            vectors = await _cohere_floats(cohere_client, [texts[i] for i in missing])
            await cache.amset(
                [
                    {"content": texts[i], "model_name": MODEL, "embedding": vector}
                    for i, vector in zip(missing, vectors, strict=True)
                ]
            )
            for i, vector in zip(missing, vectors, strict=True):
                result[i] = vector
        return result

    label = "RedisVL EmbeddingsCache" + ("" if ttl else " (no TTL)")
    return System(label, embed, name + ":", client.aclose)


# --- the run -------------------------------------------------------------------------------------


@dataclass
class StoredSize:
    memory_usage: float
    payload: float
    kind: str


@dataclass
class L2Result:
    samples: dict[tuple[str, int], Samples] = field(default_factory=dict)
    round_trips: dict[tuple[str, int], int] = field(default_factory=dict)
    commands: dict[tuple[str, int], int] = field(default_factory=dict)
    sizes: dict[str, StoredSize] = field(default_factory=dict)
    systems: list[str] = field(default_factory=list)
    iterations: dict[int, int] = field(default_factory=dict)
    cohere_calls: dict[tuple[str, int], int] = field(default_factory=dict)


def _check(name: str, result: Any, texts: list[str]) -> None:
    vectors = result if isinstance(result, list) else result.embeddings.float_
    if len(vectors) != len(texts) or any(len(v) != DIMENSION for v in vectors):
        raise RuntimeError(f"{name}: wrong embeddings for a batch of {len(texts)}")


def stored_size(redis_url: str, prefix: str, sample: int = 24) -> StoredSize:
    """Mean MEMORY USAGE and payload bytes (STRLEN, or the hash's field values) per vector."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = []
        for key in client.scan_iter(match=prefix + "*", count=1000):
            keys.append(key)
            if len(keys) >= sample:
                break
        usage: list[int] = []
        payload: list[int] = []
        kind = ""
        for key in keys:
            raw = client.type(key)
            kind = raw.decode() if isinstance(raw, bytes) else str(raw)
            usage.append(int(client.memory_usage(key, samples=0) or 0))
            if kind == "string":
                payload.append(int(client.strlen(key)))
            elif kind == "hash":
                values = client.hgetall(key)
                payload.append(sum(len(k) + len(v) for k, v in values.items()))
        if not usage:
            return StoredSize(float("nan"), float("nan"), "none")
        return StoredSize(sum(usage) / len(usage), sum(payload) / max(len(payload), 1), kind)
    finally:
        client.close()


async def run(redis_url: str, namespace: str, cohere_url: str, *, quick: bool) -> L2Result:
    import cohere

    cohere_client = cohere.AsyncClientV2(api_key="benchmark", base_url=cohere_url, timeout=60)
    factories: list[Callable[[], System]] = [
        lambda: floor_system(redis_url, namespace, cohere_client),
        lambda: cachegate_system(redis_url, namespace, cohere_client),
        lambda: langchain_system(redis_url, namespace, cohere_client),
        lambda: redisvl_system(redis_url, namespace, cohere_client),
        lambda: redisvl_system(redis_url, namespace, cohere_client, ttl=None),
    ]
    systems = [factory() for factory in factories]
    result = L2Result(systems=[s.name for s in systems])
    hot = fresh_texts(BATCH, "hot")
    try:
        for system in systems:  # fill the hot set, warm connections and imports
            _check(system.name, await system.embed(hot), hot)
            _check(system.name, await system.embed(hot), hot)
        for rate in HIT_RATES:
            iterations = (30 if quick else 200) if rate == 100 else (2 if quick else 10)
            result.iterations[rate] = iterations
            batches: dict[str, list[list[str]]] = {}
            for system in systems:
                count = iterations + 5
                batches[system.name] = [_batch(hot, rate, system.name) for _ in range(count)]

            timed = await time_async(
                {s.name: _variant(s, batches[s.name], hot, rate) for s in systems},
                warmup=(0 if quick else 1) if rate < 100 else 10,
                iterations=iterations,
                rounds=(1 if quick else 2) if rate < 100 else 5,
            )
            for system in systems:
                result.samples[system.name, rate] = timed[system.name]
                texts = _batch(hot, rate, system.name)
                before = command_calls(redis_url)
                with RoundTrips().counting() as trips:
                    _check(system.name, await system.embed(texts), texts)
                result.round_trips[system.name, rate] = trips.count
                result.commands[system.name, rate] = command_calls(redis_url) - before
        for system in systems:
            result.sizes[system.name] = stored_size(redis_url, system.prefix)
    finally:
        for system in systems:
            await system.close()
    return result


def _variant(
    system: System, queue: list[list[str]], hot: list[str], rate: int
) -> Callable[[], Awaitable[Any]]:
    async def call() -> Any:
        texts = queue.pop() if rate < 100 else hot
        return await system.embed(texts)

    return call


def _batch(hot: list[str], rate: int, label: str) -> list[str]:
    """A batch of 96 with `rate` % of hot (cached) texts, hits and misses interleaved."""
    if rate == 100:
        return list(hot)
    if rate == 0:
        return fresh_texts(BATCH, label[:8])
    new = fresh_texts(BATCH // 2, label[:8])
    mixed: list[str] = []
    for cached, fresh in zip(hot[: BATCH // 2], new, strict=True):
        mixed += [cached, fresh]
    return mixed


def main_sync(redis_url: str, namespace: str, *, quick: bool) -> L2Result:
    with CohereProcess() as server:
        return asyncio.run(run(redis_url, namespace, server.url, quick=quick))
