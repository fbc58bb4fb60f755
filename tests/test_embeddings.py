"""The L2 embedding cache through the real `cohere` SDK against a Cohere-compatible server.

Every test runs the SDK (`AsyncClientV2` / `ClientV2`, retries off) against `CohereServer` on
loopback, on `MemoryStore` and on the real Redis.
"""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import Iterator
from typing import Any

import cohere
import pytest
from cohere.errors import InternalServerError, TooManyRequestsError
from cohere.types import EmbedByTypeResponse, EmbedByTypeResponseEmbeddings
from conftest import delete_namespace
from hypothesis import given
from hypothesis import strategies as st
from support.cohere_server import CohereServer, embedding, float_vector, tokens_for
from support.stores import metrics_for

from cachegate.comparators import Outcome
from cachegate.embeddings import (
    DEFAULT_THRESHOLD,
    MAX_TEXTS_PER_CALL,
    CachedEmbedder,
    CachedEmbedderSync,
    EmbedderConfig,
    vector_key,
)
from cachegate.embeddings.accounting import Event, Tally
from cachegate.embeddings.codec import compare
from cachegate.embeddings.cohere import response
from cachegate.embeddings.plan import key_builders
from cachegate.keys import Normalization, normalize_text
from cachegate.rollout import Decision, Mode, using_decision
from cachegate.store import MemoryStore, RedisStore, Store
from cachegate.vectors import (
    FLOAT16_COSINE_LOSS_BOUND,
    DType,
    cosine_similarity,
    decode_vector,
    encode_vector,
)

pytestmark = pytest.mark.anyio

DIM = 16
MODEL = "embed-english-v3.0"
QUERY = "search_query"
TENANT = "tenant-a"


@pytest.fixture(scope="module")
def cohere_server() -> Iterator[CohereServer]:
    with CohereServer(default_dimension=DIM) as server:
        yield server


@pytest.fixture
def server(cohere_server: CohereServer) -> CohereServer:
    cohere_server.reset()
    return cohere_server


@pytest.fixture
def client(server: CohereServer) -> cohere.AsyncClientV2:
    return cohere.AsyncClientV2(api_key="test", base_url=server.url, max_retries=0)


def embedder(
    client: cohere.AsyncClientV2, store: Store, namespace: str, **options: Any
) -> CachedEmbedder:
    options.setdefault("tenant", lambda: TENANT)
    return CachedEmbedder(client, store, namespace=namespace, **options)


def expected(text: str, *, model: str = MODEL, input_type: str = QUERY, dim: int = DIM) -> Any:
    return float_vector(model, input_type, text, dim)


def key(namespace: str, text: str, **options: Any) -> str:
    params: dict[str, Any] = {
        "model": MODEL,
        "input_type": QUERY,
        "embedding_type": "float",
        "tenant": TENANT,
    }
    params.update(options)
    return vector_key(namespace, text=text, **params)


async def stored_keys(store: Store, namespace: str) -> list[str]:
    """The keys of this test's namespace in the store."""
    if isinstance(store, MemoryStore):
        return [k for k in store._items if k.startswith(namespace + ":")]
    assert isinstance(store, RedisStore)
    return [k.decode() async for k in store.client.scan_iter(match=f"{namespace}:*")]


async def test_hit_and_miss_per_text(
    client: cohere.AsyncClientV2, store: Store, namespace: str, server: CohereServer
) -> None:
    cached = embedder(client, store, namespace)
    first = await cached.embed(texts=["alpha", "beta"], model=MODEL, input_type=QUERY)
    second = await cached.embed(texts=["alpha", "gamma"], model=MODEL, input_type=QUERY)

    assert isinstance(first, EmbedByTypeResponse)
    assert first.embeddings.float_ == [expected("alpha"), expected("beta")]
    assert second.embeddings.float_ == [expected("alpha"), expected("gamma")]
    assert second.texts == ["alpha", "gamma"]
    assert [call.texts for call in server.calls] == [["alpha", "beta"], ["gamma"]]
    assert (cached.stats.hits, cached.stats.misses) == (1, 3)
    assert len(await stored_keys(store, namespace)) == 3
    if isinstance(store, RedisStore):
        ttl_ms = await store.client.pttl(key(namespace, "alpha"))
        assert 3_590_000 < ttl_ms <= 3_600_000


async def test_caller_order_with_duplicates(
    client: cohere.AsyncClientV2, store: Store, namespace: str, server: CohereServer
) -> None:
    cached = embedder(client, store, namespace)
    texts = ["b", "a", "b", "c", "a", "b"]
    fresh = await cached.embed(texts=texts, model=MODEL, input_type=QUERY)
    again = await cached.embed(texts=texts, model=MODEL, input_type=QUERY)

    assert [call.texts for call in server.calls] == [["b", "a", "c"]]
    for result in (fresh, again):
        vectors = result.embeddings.float_
        assert vectors == [expected(text) for text in texts]
        assert vectors is not None and vectors[0] is not vectors[2]
        assert result.texts == texts
    assert again.meta is not None and again.meta.billed_units is not None
    assert again.meta.billed_units.input_tokens == 0
    assert (cached.stats.hits, cached.stats.misses) == (3, 3)


@pytest.mark.parametrize(
    ("count", "chunks"),
    [(1, [1]), (96, [96]), (97, [96, 1]), (500, [96, 96, 96, 96, 96, 20])],
)
async def test_batches_are_chunked_at_96_and_read_back_in_one_call(
    client: cohere.AsyncClientV2,
    store: Store,
    namespace: str,
    server: CohereServer,
    count: int,
    chunks: list[int],
) -> None:
    cached = embedder(client, store, namespace)
    texts = [f"text {i}" for i in range(count)]
    first = await cached.embed(texts=texts, model=MODEL, input_type=QUERY)
    assert sorted(server.texts_per_call, reverse=True) == chunks
    assert sorted(t for call in server.calls for t in call.texts) == sorted(texts)

    second = await cached.embed(texts=texts, model=MODEL, input_type=QUERY)
    assert len(server.calls) == len(chunks)
    assert first.embeddings.float_ == second.embeddings.float_ == [expected(t) for t in texts]
    assert cached.stats.hits == count
    assert cached.stats.calls_avoided == len(chunks)


async def test_chunks_run_at_most_max_concurrency_at_a_time(
    client: cohere.AsyncClientV2, namespace: str, server: CohereServer
) -> None:
    server.delay = 0.1
    texts = [f"t{i}" for i in range(500)]
    four = embedder(client, MemoryStore(), namespace)
    await four.embed(texts=texts, model=MODEL, input_type=QUERY)
    assert server.max_in_flight == 4  # the behaviour; how long it took is for benchmarks/

    server.reset()
    server.delay = 0.02
    two = embedder(client, MemoryStore(), namespace, max_concurrency=2)
    await two.embed(texts=texts, model=MODEL, input_type=QUERY)
    assert server.max_in_flight == 2


@pytest.mark.parametrize(
    ("change", "distinct_vectors"),
    [
        ({"model": "embed-multilingual-v3.0"}, True),
        ({"input_type": "search_document"}, True),
        ({"output_dimension": 32}, True),
        ({"embedding_types": ["int8"]}, True),
        ({"truncate": "START"}, False),
        ({"max_tokens": 128}, False),
    ],
)
async def test_keyed_parameters_never_share_vectors(
    client: cohere.AsyncClientV2,
    store: Store,
    namespace: str,
    server: CohereServer,
    change: dict[str, Any],
    distinct_vectors: bool,
) -> None:
    cached = embedder(client, store, namespace)
    base: dict[str, Any] = {"texts": ["same text"], "model": MODEL, "input_type": QUERY}
    plain = await cached.embed(**base)
    changed = await cached.embed(**{**base, **change})
    again = await cached.embed(**{**base, **change})

    assert len(server.calls) == 2
    assert cached.stats.hits == 1
    assert changed == again or changed.embeddings == again.embeddings
    if distinct_vectors:
        assert changed.embeddings != plain.embeddings


async def test_embedding_types_are_stored_per_type(
    client: cohere.AsyncClientV2, store: Store, namespace: str, server: CohereServer
) -> None:
    cached = embedder(client, store, namespace)
    kinds = ["float", "int8", "uint8", "binary", "ubinary"]
    both = await cached.embed(
        texts=["x", "y"], model=MODEL, input_type=QUERY, embedding_types=kinds
    )
    only_int8 = await cached.embed(
        texts=["y", "x"], model=MODEL, input_type=QUERY, embedding_types=["int8"]
    )
    assert len(server.calls) == 1
    assert only_int8.embeddings.int8 == [
        embedding("int8", MODEL, QUERY, text, DIM) for text in ["y", "x"]
    ]
    assert only_int8.embeddings.float_ is None
    for kind in kinds:
        field = "float_" if kind == "float" else kind
        assert getattr(both.embeddings, field) == [
            embedding(kind, MODEL, QUERY, text, DIM) for text in ["x", "y"]
        ]


async def test_tenants_never_share_vectors_unless_global_is_chosen(
    client: cohere.AsyncClientV2, store: Store, namespace: str, server: CohereServer
) -> None:
    current = {"tenant": "a"}
    cached = embedder(client, store, namespace, tenant=lambda: current["tenant"])
    await cached.embed(texts=["shared"], model=MODEL, input_type=QUERY)
    current["tenant"] = "b"
    await cached.embed(texts=["shared"], model=MODEL, input_type=QUERY)
    await cached.embed(texts=["shared"], model=MODEL, input_type=QUERY, tenant="c")
    await cached.embed(texts=["shared"], model=MODEL, input_type=QUERY, tenant="a")
    assert len(server.calls) == 3
    assert cached.stats.hits == 1

    shared = embedder(client, store, namespace, scope="global", tenant=None)
    await shared.embed(texts=["shared"], model=MODEL, input_type=QUERY, tenant="a")
    await shared.embed(texts=["shared"], model=MODEL, input_type=QUERY, tenant="b")
    await shared.embed(texts=["shared"], model=MODEL, input_type=QUERY)
    assert len(server.calls) == 4
    assert shared.stats.hits == 2


async def test_no_tenant_means_no_cache(
    client: cohere.AsyncClientV2,
    store: Store,
    namespace: str,
    server: CohereServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cached = embedder(client, store, namespace, tenant=lambda: None)
    with caplog.at_level(logging.WARNING, logger="cachegate.embeddings"):
        for _ in range(2):
            result = await cached.embed(texts=["secret note"], model=MODEL, input_type=QUERY)
            assert result.embeddings.float_ == [expected("secret note")]
    assert len(server.calls) == 2
    assert await stored_keys(store, namespace) == []
    assert cached.stats.bypassed == 2
    assert "no tenant" in caplog.text
    assert len(caplog.records) == 1
    assert "secret note" not in caplog.text


async def test_mode_off_calls_cohere_only(
    client: cohere.AsyncClientV2, store: Store, namespace: str, server: CohereServer
) -> None:
    cached = embedder(client, store, namespace)
    garbage = key(namespace, "g")
    await store.set_many([(garbage, b"garbage")], 60)
    texts = [f"t{i}" for i in range(100)] + ["g", "t0"]
    with using_decision(Decision(l2=Mode.OFF)):
        result = await cached.embed(texts=texts, model=MODEL, input_type=QUERY)
    assert result.embeddings.float_ == [expected(t) for t in texts]
    assert sorted(server.texts_per_call) == [5, 96]
    assert await stored_keys(store, namespace) == [garbage]
    assert cached.stats.corrupt == 0
    assert (cached.stats.hits, cached.stats.misses, cached.stats.shadow_hits) == (0, 0, 0)


async def test_constructor_mode_applies_outside_a_request(
    client: cohere.AsyncClientV2, store: Store, namespace: str, server: CohereServer
) -> None:
    cached = embedder(client, store, namespace, mode=Mode.OFF)
    await cached.embed(texts=["t"], model=MODEL, input_type=QUERY)
    assert await stored_keys(store, namespace) == []
    with using_decision(Decision(l2=Mode.SERVE)):
        await cached.embed(texts=["t"], model=MODEL, input_type=QUERY)
        await cached.embed(texts=["t"], model=MODEL, input_type=QUERY)
    assert len(server.calls) == 2
    assert cached.stats.hits == 1


async def test_shadow_compares_and_serves_fresh(
    client: cohere.AsyncClientV2, store: Store, namespace: str, server: CohereServer
) -> None:
    metrics = metrics_for(store)
    registry = metrics.registry
    assert registry is not None
    cached = embedder(client, store, namespace, metrics=metrics)
    await cached.embed(texts=["same", "changed"], model=MODEL, input_type=QUERY)
    wrong = encode_vector(expected("something else"), DType.FLOAT32)
    await store.set_many([(key(namespace, "changed"), wrong)], 60)

    with using_decision(Decision(l2=Mode.SHADOW)):
        result = await cached.embed(texts=["same", "changed", "new"], model=MODEL, input_type=QUERY)
    assert result.embeddings.float_ == [expected(t) for t in ["same", "changed", "new"]]
    assert server.calls[-1].texts == ["same", "changed", "new"]
    stats = cached.stats
    assert (stats.shadow_hits, stats.shadow_misses) == (2, 1)
    assert (stats.matches, stats.mismatches, stats.comparison_errors) == (1, 1, 0)
    assert (stats.hits, stats.calls_avoided, stats.tokens_avoided) == (0, 0, 0.0)

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"cache_layer": "embedding", **labels})

    assert sample("cachegate_comparisons_total", kind="shadow", outcome="mismatch") == 1
    assert sample("cachegate_comparisons_total", kind="shadow", outcome="match") == 1
    assert sample("cachegate_shadow_lookups_total", result="hit") == 2

    served = await cached.embed(texts=["changed", "new"], model=MODEL, input_type=QUERY)
    assert served.embeddings.float_ == [expected("changed"), expected("new")]
    assert len(server.calls) == 2


@pytest.mark.parametrize(
    "bad",
    [
        b"garbage",
        encode_vector(expected("c"), DType.FLOAT32)[:-3],
        b"CGV\x02" + encode_vector(expected("c"), DType.FLOAT32)[4:],
        encode_vector([1] * DIM, DType.INT8),
        encode_vector([0.5] * (DIM + 1), DType.FLOAT32),
    ],
    ids=["garbage", "truncated", "other-version", "wrong-dtype", "wrong-dimension"],
)
async def test_corrupt_entries_are_misses_deleted_and_counted(
    client: cohere.AsyncClientV2,
    store: Store,
    namespace: str,
    server: CohereServer,
    bad: bytes,
) -> None:
    metrics = metrics_for(store)
    registry = metrics.registry
    assert registry is not None
    cached = embedder(client, store, namespace, metrics=metrics)
    corrupt_key = key(namespace, "c", output_dimension=DIM)
    await store.set_many([(corrupt_key, bad)], 60)
    server.fail(500)
    with pytest.raises(InternalServerError):
        await cached.embed(texts=["c"], model=MODEL, input_type=QUERY, output_dimension=DIM)
    assert await store.get_many([corrupt_key]) == [None]
    result = await cached.embed(texts=["c"], model=MODEL, input_type=QUERY, output_dimension=DIM)
    assert result.embeddings.float_ == [expected("c")]
    assert len(server.calls) == 2
    assert cached.stats.corrupt == 1
    corrupt = registry.get_sample_value(
        "cachegate_corrupt_entries_total", {"cache_layer": "embedding"}
    )
    assert corrupt == 1
    [value] = await store.get_many([corrupt_key])
    assert value is not None and decode_vector(value).values == expected("c")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_store_down_fails_open(
    client: cohere.AsyncClientV2, namespace: str, server: CohereServer
) -> None:
    down = RedisStore.from_url(f"redis://127.0.0.1:{closed_port()}", deadline=0.5)
    cached = embedder(client, down, namespace)
    try:
        for _ in range(2):
            result = await cached.embed(texts=["a", "b", "a"], model=MODEL, input_type=QUERY)
            assert result.embeddings.float_ == [expected(t) for t in ["a", "b", "a"]]
    finally:
        await down.aclose()
    assert len(server.calls) == 2
    assert cached.stats.store_errors == 2
    assert (cached.stats.misses, cached.stats.bypassed) == (0, 2), "bypasses, as in L1"


@pytest.mark.parametrize(
    ("status", "error"), [(429, TooManyRequestsError), (500, InternalServerError)]
)
async def test_cohere_errors_reach_the_caller_and_nothing_is_cached(
    client: cohere.AsyncClientV2,
    store: Store,
    namespace: str,
    server: CohereServer,
    status: int,
    error: type[Exception],
) -> None:
    cached = embedder(client, store, namespace)
    server.fail(status)
    with pytest.raises(error):
        await cached.embed(texts=["a", "b"], model=MODEL, input_type=QUERY)
    assert await stored_keys(store, namespace) == []
    result = await cached.embed(texts=["a", "b"], model=MODEL, input_type=QUERY)
    assert result.embeddings.float_ == [expected("a"), expected("b")]
    assert [call.status for call in server.calls] == [status, 200]
    assert cached.stats.cohere_errors == 1


async def test_partial_failure_keeps_only_the_chunks_that_succeeded(
    client: cohere.AsyncClientV2, store: Store, namespace: str, server: CohereServer
) -> None:
    cached = embedder(client, store, namespace, max_concurrency=1)
    texts = [f"t{i}" for i in range(200)]
    server.fail(500, after=1)
    with pytest.raises(InternalServerError):
        await cached.embed(texts=texts, model=MODEL, input_type=QUERY)
    assert [(len(c.texts), c.status) for c in server.calls] == [(96, 200), (96, 500)]
    assert len(await stored_keys(store, namespace)) == 96

    result = await cached.embed(texts=texts, model=MODEL, input_type=QUERY)
    assert result.embeddings.float_ == [expected(t) for t in texts]
    assert [len(c.texts) for c in server.calls[2:]] == [96, 8]
    assert sorted(t for c in server.calls[2:] for t in c.texts) == sorted(texts[96:])


async def test_accounting_of_billed_and_avoided_work(
    client: cohere.AsyncClientV2, store: Store, namespace: str, server: CohereServer
) -> None:
    metrics = metrics_for(store)
    registry = metrics.registry
    assert registry is not None
    cached = embedder(client, store, namespace, metrics=metrics, cost_per_call=0.01)
    await cached.embed(texts=["one two", "three"], model=MODEL, input_type=QUERY)
    assert cached.stats.billed_tokens == 3
    assert cached.stats.tokens_per_text == 1.5
    await cached.embed(texts=["one two", "three"], model=MODEL, input_type=QUERY)
    texts = [f"word {i}" for i in range(100)]
    await cached.embed(texts=texts[:10], model=MODEL, input_type=QUERY)
    await cached.embed(texts=texts, model=MODEL, input_type=QUERY)

    stats = cached.stats
    billed = 3 + sum(tokens_for(t) for t in texts)
    assert stats.billed_tokens == billed
    assert stats.texts_embedded == 102
    assert stats.hits == 12
    assert stats.calls_avoided == 1 + 1
    assert stats.cost_avoided == pytest.approx(0.02)
    assert stats.tokens_avoided == pytest.approx(2 * 1.5 + 10 * billed / 102)
    assert stats.seconds_avoided > 0

    def sample(name: str) -> float | None:
        return registry.get_sample_value(name, {"cache_layer": "embedding"})

    assert sample("cachegate_cache_hits_total") == 12
    assert sample("cachegate_cache_misses_total") == 102
    assert sample("cachegate_fresh_calls_avoided_total") == 2
    assert sample("cachegate_tokens_avoided_total") == pytest.approx(stats.tokens_avoided)
    assert sample("cachegate_cost_avoided_dollars_total") == pytest.approx(0.02)


async def test_loose_normalisation_shares_vectors_but_sends_the_original_text(
    client: cohere.AsyncClientV2, store: Store, namespace: str, server: CohereServer
) -> None:
    cached = embedder(client, store, namespace, normalization=Normalization.LOOSE)
    first = await cached.embed(texts=["Hello  World"], model=MODEL, input_type=QUERY)
    second = await cached.embed(texts=["hello world "], model=MODEL, input_type=QUERY)
    assert [call.texts for call in server.calls] == [["Hello  World"]]
    assert second.embeddings.float_ == first.embeddings.float_
    assert second.texts == ["hello world "]

    exact = embedder(client, store, namespace)
    await exact.embed(texts=["hello world"], model=MODEL, input_type=QUERY)
    assert len(server.calls) == 2


async def test_calls_the_cache_does_not_understand_pass_through(
    client: cohere.AsyncClientV2, store: Store, namespace: str, server: CohereServer
) -> None:
    cached = embedder(client, store, namespace)
    for _ in range(2):
        result = await cached.embed(
            texts=["a"], model=MODEL, input_type=QUERY, embedding_types=["float", "base64"]
        )
        assert result.embeddings.base64 is not None
    assert len(server.calls) == 2
    assert await stored_keys(store, namespace) == []
    assert cached.stats.bypassed == 2


async def test_float16_storage_halves_values_within_the_cosine_bound(
    client: cohere.AsyncClientV2, store: Store, namespace: str, server: CohereServer
) -> None:
    cached = embedder(client, store, namespace, storage="float16")
    assert cached.shadow_threshold < 0.999
    texts = [f"t{i}" for i in range(20)]
    await cached.embed(texts=texts, model=MODEL, input_type=QUERY, output_dimension=1024)
    [raw] = await store.get_many([key(namespace, "t0", output_dimension=1024)])
    assert raw is not None and len(raw) == 2062
    hit = await cached.embed(texts=texts, model=MODEL, input_type=QUERY, output_dimension=1024)
    assert len(server.calls) == 1
    assert hit.embeddings.float_ is not None
    for text, vector in zip(texts, hit.embeddings.float_, strict=True):
        exact = expected(text, dim=1024)
        assert vector != exact
        assert 1 - cosine_similarity(vector, exact) <= FLOAT16_COSINE_LOSS_BOUND

    with using_decision(Decision(l2=Mode.SHADOW)):
        await cached.embed(texts=texts, model=MODEL, input_type=QUERY, output_dimension=1024)
    assert cached.stats.matches == 20


async def test_a_hit_does_not_wait_for_cohere(
    client: cohere.AsyncClientV2, store: Store, namespace: str, server: CohereServer
) -> None:
    """1024-dimension vectors, Cohere slowed to 100 ms: a hit never calls it (its speed is a
    benchmark, `benchmarks/`, not a timed assertion)."""
    server.delay = 0.1
    cached = embedder(client, store, namespace)
    options: dict[str, Any] = {"model": MODEL, "input_type": QUERY, "output_dimension": 1024}
    first = await cached.embed(texts=["query"], **options)
    calls = len(server.calls)
    second = await cached.embed(texts=["query"], **options)
    assert calls == 1 and len(server.calls) == calls
    assert cached.stats.hits == 1
    assert second.embeddings.float_ == first.embeddings.float_


key_params = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["embed-english-v3.0", "embed-v4.0"]),
        "input_type": st.sampled_from(["search_query", "search_document"]),
        "embedding_type": st.sampled_from(["float", "int8", "binary"]),
        "output_dimension": st.sampled_from([None, 256, 1024]),
        "truncate": st.sampled_from([None, "END", "START"]),
        "max_tokens": st.sampled_from([None, 128]),
        "normalization": st.sampled_from([Normalization.EXACT, Normalization.LOOSE]),
        "tenant": st.sampled_from([None, "a", "b", ""]),
        "text": st.sampled_from(["x", "y", "X "]),
    }
)


@given(key_params, key_params)
def test_keys_differ_when_any_keyed_parameter_differs(
    one: dict[str, Any], other: dict[str, Any]
) -> None:
    def meaning(params: dict[str, Any]) -> dict[str, Any]:
        loose = params["normalization"] is Normalization.LOOSE
        text = params["text"].strip().lower() if loose else params["text"]
        return {**params, "text": text}

    same_key = vector_key("ns", **one) == vector_key("ns", **other)
    assert same_key == (meaning(one) == meaning(other))
    assert vector_key("ns", **one) != vector_key("ns2", **one)
    assert "x" not in vector_key("ns", **one).split(":", 1)[1]


@given(st.lists(key_params, min_size=1, max_size=6))
def test_a_calls_keys_are_its_texts_vector_keys(calls: list[dict[str, Any]]) -> None:
    """Key builders are made once per model, options and tenant and reused by later calls:
    every call still keys its text exactly as `vector_key` does."""
    for params in calls:
        options = {name: params[name] for name in ("model", "input_type", "truncate")}
        kwargs = {**options, "output_dimension": params["output_dimension"]}
        if params["max_tokens"] is not None:
            kwargs["max_tokens"] = params["max_tokens"]
        (builder,) = key_builders(
            kwargs,
            (params["embedding_type"],),
            namespace="ns",
            tenant=params["tenant"],
            normalization=params["normalization"],
            secret=None,
        )
        text = normalize_text(params["text"], params["normalization"])
        assert builder.keys([text]) == [vector_key("ns", **params)]


def test_an_option_equal_to_another_of_another_type_keys_apart() -> None:
    """`True == 1` in Python: the reused builders tell them apart as the keys do."""
    kwargs: dict[str, Any] = {"model": MODEL, "input_type": QUERY}
    ones = [
        key_builders(
            {**kwargs, "output_dimension": value},
            ("float",),
            namespace="ns",
            tenant="t",
            normalization=Normalization.EXACT,
            secret=None,
        )[0].key("x")
        for value in (1, True)
    ]
    assert ones[0] != ones[1]


@pytest.fixture(params=["memory", "redis"])
def sync_store(request: pytest.FixtureRequest, namespace: str) -> Iterator[Store]:
    """A store for the sync embedder, which owns it and closes it on its own loop."""
    if request.param == "memory":
        yield MemoryStore()
        return
    url = request.getfixturevalue("redis_url")
    yield RedisStore.from_url(url, deadline=1.0)
    delete_namespace(url, namespace)


def test_sync_client(sync_store: Store, namespace: str, server: CohereServer) -> None:
    client = cohere.ClientV2(api_key="test", base_url=server.url, max_retries=0)
    texts = [f"s{i}" for i in range(150)] + ["s0"]
    with CachedEmbedderSync(
        client, sync_store, namespace=namespace, tenant=lambda: TENANT
    ) as cached:
        first = cached.embed(texts=texts, model=MODEL, input_type=QUERY)
        second = cached.embed(texts=texts, model=MODEL, input_type=QUERY)
        assert first.embeddings.float_ == second.embeddings.float_ == [expected(t) for t in texts]
        assert sorted(server.texts_per_call) == [54, 96]
        assert (cached.stats.hits, cached.stats.misses) == (150, 150)

        server.fail(429)
        with pytest.raises(TooManyRequestsError):
            cached.embed(texts=["new"], model=MODEL, input_type=QUERY)
        with using_decision(Decision(l2=Mode.SHADOW)):
            shadowed = cached.embed(texts=["s1", "new"], model=MODEL, input_type=QUERY)
        assert shadowed.embeddings.float_ == [expected("s1"), expected("new")]
        assert (cached.stats.shadow_hits, cached.stats.shadow_misses) == (1, 1)
        assert cached.stats.matches == 1
        assert server.calls[-1].texts == ["s1", "new"]
    with pytest.raises(RuntimeError):
        cached.embed(texts=["x"], model=MODEL, input_type=QUERY)


def test_sync_client_with_the_store_down(namespace: str, server: CohereServer) -> None:
    client = cohere.ClientV2(api_key="test", base_url=server.url, max_retries=0)
    down = RedisStore.from_url(f"redis://127.0.0.1:{closed_port()}", deadline=0.5)
    with CachedEmbedderSync(client, down, namespace=namespace, scope="global") as cached:
        result = cached.embed(texts=["a"], model=MODEL, input_type=QUERY)
        assert result.embeddings.float_ == [expected("a")]
        assert cached.stats.store_errors == 1


def test_limits_are_checked() -> None:
    store = MemoryStore()
    client = cohere.AsyncClientV2(api_key="test", base_url="http://127.0.0.1:9")
    with pytest.raises(ValueError):
        CachedEmbedder(client, store, batch_size=MAX_TEXTS_PER_CALL + 1)
    with pytest.raises(ValueError):
        CachedEmbedder(client, store, max_concurrency=0)
    with pytest.raises(ValueError):
        CachedEmbedder(client, store, namespace="bad:name")
    assert math.isclose(CachedEmbedder(client, store).shadow_threshold, 0.999)


async def test_the_request_tenant_of_the_middleware_is_the_default_scope(
    client: cohere.AsyncClientV2, store: Store, namespace: str, server: CohereServer
) -> None:
    """Inside a CacheGate request the embedder needs no tenant argument or callable."""
    from cachegate.rollout import Decision, using_decision

    cached = CachedEmbedder(client, store, namespace=namespace)
    serve = Decision(l1=Mode.SERVE, l2=Mode.SERVE)
    with using_decision(serve, "workspace-a"):
        await cached.embed(texts=["hello"], model=MODEL, input_type=QUERY)
        await cached.embed(texts=["hello"], model=MODEL, input_type=QUERY)
    with using_decision(serve, "workspace-b"):
        await cached.embed(texts=["hello"], model=MODEL, input_type=QUERY)
    assert (cached.stats.hits, cached.stats.misses) == (1, 2)
    assert [call.texts for call in server.calls] == [["hello"], ["hello"]]


def test_one_configuration_object_or_its_fields_as_keywords() -> None:
    """`config=` groups the options; keywords given beside it win; a wrong one fails at once."""
    store = MemoryStore()
    client = cohere.AsyncClientV2(api_key="test", base_url="http://127.0.0.1:9")
    config = EmbedderConfig(namespace="cfg", storage="float16", scope="global", ttl=5)
    grouped = CachedEmbedder(client, store, config=config)
    assert grouped.config is config
    assert grouped.shadow_threshold < DEFAULT_THRESHOLD, "float16 widens the threshold"
    mixed = CachedEmbedder(client, store, config, storage="float32", ttl=7)
    assert (mixed.config.namespace, mixed.config.storage, mixed.config.ttl) == ("cfg", "float32", 7)
    assert mixed.shadow_threshold == DEFAULT_THRESHOLD
    assert CachedEmbedder(client, store, namespace="cfg", ttl=5).config.ttl == 5
    with pytest.raises(TypeError):
        CachedEmbedder(client, store, ttl_seconds=5)
    with pytest.raises(ValueError, match="storage"):
        CachedEmbedder(client, store, config, storage="float8")
    with pytest.raises(ValueError, match="secret"):
        EmbedderConfig(key_secret=b"short")


async def test_stats_are_the_counts_the_metrics_were_given(
    client: cohere.AsyncClientV2, store: Store, namespace: str, server: CohereServer
) -> None:
    """One counting path: after serve, shadow, corrupt entries and a failed read, every total
    with a Prometheus series equals that series (two embedders, one `Metrics`)."""
    metrics = metrics_for(store)
    registry = metrics.registry
    assert registry is not None
    cached = embedder(client, store, namespace, metrics=metrics)
    await cached.embed(texts=["a", "b"], model=MODEL, input_type=QUERY)
    await cached.embed(texts=["a", "b", "c"], model=MODEL, input_type=QUERY)
    await store.set_many([(key(namespace, "c"), b"garbage")], 60)
    wrong = encode_vector(expected("elsewhere"), DType.FLOAT32)
    await store.set_many([(key(namespace, "b"), wrong)], 60)
    with using_decision(Decision(l2=Mode.SHADOW)):
        await cached.embed(texts=["a", "b", "c", "d"], model=MODEL, input_type=QUERY)
    down = RedisStore.from_url(f"redis://127.0.0.1:{closed_port()}", deadline=0.5, metrics=metrics)
    failing = embedder(client, down, namespace, metrics=metrics)
    try:
        await failing.embed(texts=["a"], model=MODEL, input_type=QUERY)
    finally:
        await down.aclose()

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"cache_layer": "embedding", **labels})

    stats = cached.stats
    assert (stats.hits, stats.misses, stats.shadow_hits, stats.shadow_misses) == (2, 3, 2, 2)
    assert (stats.matches, stats.mismatches, stats.corrupt) == (1, 1, 1)
    assert (failing.stats.hits, failing.stats.misses) == (0, 0), "a failed read is a bypass"
    assert sample("cachegate_cache_hits_total") == stats.hits
    assert sample("cachegate_cache_misses_total") == stats.misses
    assert sample("cachegate_shadow_lookups_total", result="hit") == stats.shadow_hits
    assert sample("cachegate_shadow_lookups_total", result="miss") == stats.shadow_misses
    for outcome, total in [("match", 1), ("mismatch", 1), ("error", 0)]:
        assert sample("cachegate_comparisons_total", kind="shadow", outcome=outcome) == total
    assert sample("cachegate_corrupt_entries_total") == stats.corrupt
    assert sample("cachegate_fresh_calls_avoided_total") == stats.calls_avoided
    assert sample("cachegate_cost_avoided_dollars_total") == pytest.approx(stats.cost_avoided)
    assert sample("cachegate_tokens_avoided_total") == pytest.approx(stats.tokens_avoided)
    assert failing.stats.bypassed == 1 and cached.stats.bypassed == 0
    bypasses = registry.get_sample_value("cachegate_bypasses_total", {"reason": "store_error"})
    assert bypasses == failing.stats.bypassed


@pytest.mark.parametrize(
    ("cached", "fresh", "outcome"),
    [
        ({"float": [1.0, 0.0]}, {"float": [1.0, 0.0]}, Outcome.MATCH),
        ({"float": [1.0, 0.0]}, {"float": [0.0, 1.0]}, Outcome.MISMATCH),
        ({"float": [1.0, 0.0], "int8": [0, 0]}, {"float": [0.0, 1.0], "int8": [1]}, Outcome.ERROR),
        ({"uint8": [128, 129]}, {"uint8": [128, 129]}, Outcome.MATCH),
        ({"binary": [0, -1]}, {"binary": [0, 0]}, Outcome.MISMATCH),
    ],
)
def test_comparisons_speak_the_l1_outcome(
    cached: dict[str, list[Any]], fresh: dict[str, list[Any]], outcome: Outcome
) -> None:
    """A text's comparison is an `Outcome`, as in L1: an error anywhere wins over a mismatch."""
    assert compare(cached, fresh, threshold=0.999, float_threshold=0.999) is outcome


def test_the_response_built_without_validation_equals_the_validated_one() -> None:
    """The all-hit answer skips pydantic's per-float validation; it must be the same object
    the SDK's validation would have produced, and survive a dump and reload."""
    columns: dict[str, list[list[Any]]] = {
        "float": [[0.5, -0.25, 1.0, 0.0], [0.125, 0.0, -1.0, 2.0]],
        "int8": [[-128, 0, 5, 127], [1, 2, 3, 4]],
        "uint8": [[0, 255, 128, 7], [9, 8, 7, 6]],
        "binary": [[-1], [3]],
        "ubinary": [[255], [0]],
    }
    built = response(columns, ["a", "b"], [], 3.0)
    assert built.embeddings == EmbedByTypeResponseEmbeddings.model_validate(columns)
    assert built.embeddings.float_ == columns["float"]
    assert built.embeddings.base64 is None
    reloaded = EmbedByTypeResponse.model_validate(built.model_dump(by_alias=True))
    assert reloaded == built
    assert built.meta is not None and built.meta.billed_units is not None
    assert built.meta.billed_units.input_tokens == 3.0


def test_a_tally_rate_is_its_stats_rate_and_a_zero_count_changes_nothing() -> None:
    """`_count_served` reads its rates with `per_unit`, not through a `stats` snapshot."""
    metrics = metrics_for(None)
    registry = metrics.registry
    assert registry is not None
    tally = Tally(metrics)
    assert tally.per_unit(Event.BILLED_TOKENS, Event.TEXT_EMBEDDED) == 0.0
    tally.count(Event.TEXT_EMBEDDED, 4)
    tally.count(Event.BILLED_TOKENS, 10)
    tally.count(Event.COHERE_CALL)
    tally.count(Event.COHERE_CALL)
    tally.count(Event.COHERE_SECONDS, 0.5)
    tokens = tally.per_unit(Event.BILLED_TOKENS, Event.TEXT_EMBEDDED)
    assert tokens == tally.stats.tokens_per_text == 2.5
    seconds = tally.per_unit(Event.COHERE_SECONDS, Event.COHERE_CALL)
    assert seconds == tally.stats.seconds_per_call == 0.25
    tally.count(Event.HIT, 3)
    tally.count(Event.HIT, 0)
    assert tally.stats.hits == 3
    hits = registry.get_sample_value("cachegate_cache_hits_total", {"cache_layer": "embedding"})
    assert hits == 3
