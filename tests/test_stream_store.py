"""Chunked entries: a streamed response's chunks and their time offsets survive the codec and
the stores exactly, old (whole) entries still decode, and damaged chunk tables are corrupt."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest
from conftest import delete_namespace
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from cachegate.keying import Keying
from cachegate.keys import KeySpace
from cachegate.metrics import Metrics
from cachegate.policy import Policy, Streams, trusted_header
from cachegate.policy import RequestView as View
from cachegate.results import ResultCache
from cachegate.store import MemoryStore, RedisStore, Store
from cachegate.store.codec import (
    CorruptEntry,
    Entry,
    StreamEntry,
    decode_stored,
    encode_entry,
    encode_stream_entry,
)

HEADERS = ((b"content-type", b"text/event-stream; charset=utf-8"), (b"x-model", b"demo"))
GENERATIONS = (7, 11)

chunkings = st.lists(
    st.tuples(st.integers(min_value=0, max_value=5_000_000), st.binary(max_size=64)),
    min_size=1,
    max_size=30,
).map(lambda pairs: _monotonic(pairs))


def _monotonic(pairs: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """Gaps to offsets: each chunk at or after the one before, as a clock gives them."""
    at, out = 0, []
    for gap, chunk in pairs:
        at += gap
        out.append((at, chunk))
    return out


def stream_of(pieces: list[tuple[int, bytes]]) -> StreamEntry:
    body = b"".join(chunk for _, chunk in pieces)
    chunks = tuple((offset, len(chunk)) for offset, chunk in pieces)
    return StreamEntry(Entry(200, HEADERS, body, GENERATIONS), chunks)


@given(pieces=chunkings)
@settings(deadline=None)
def test_any_chunking_round_trips_through_the_codec(pieces: list[tuple[int, bytes]]) -> None:
    decoded = decode_stored(encode_stream_entry(stream_of(pieces)))
    assert isinstance(decoded, StreamEntry)
    assert decoded.pieces() == pieces
    assert decoded.entry == stream_of(pieces).entry


def test_a_version_1_entry_still_decodes_as_a_whole_entry() -> None:
    entry = Entry(200, HEADERS, b"whole body", GENERATIONS)
    assert decode_stored(encode_entry(entry)) == entry


@given(pieces=chunkings, data=st.data())
@settings(deadline=None)
def test_a_truncated_or_padded_chunked_entry_is_corrupt(
    pieces: list[tuple[int, bytes]], data: st.DataObject
) -> None:
    encoded = encode_stream_entry(stream_of(pieces))
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    with pytest.raises(CorruptEntry):
        decode_stored(encoded[:cut])
    with pytest.raises(CorruptEntry):
        decode_stored(encoded + b"x")


def test_chunk_lengths_that_do_not_cover_the_body_are_corrupt() -> None:
    good = encode_stream_entry(stream_of([(0, b"ab"), (10, b"cd")]))
    # the second chunk's length (4 bytes after its 8-byte offset) claims 3 bytes instead of 2
    table = 7 + 12
    damaged = good[: table + 8] + (3).to_bytes(4, "big") + good[table + 12 :]
    with pytest.raises(CorruptEntry):
        decode_stored(damaged)


def test_chunk_offsets_that_go_back_in_time_are_corrupt() -> None:
    good = encode_stream_entry(stream_of([(0, b"ab"), (10, b"cd")]))
    damaged = good[:7] + (20).to_bytes(8, "big") + good[15:]
    with pytest.raises(CorruptEntry):
        decode_stored(damaged)


def test_encoding_refuses_chunks_that_do_not_cover_the_body() -> None:
    with pytest.raises(ValueError, match="add up"):
        encode_stream_entry(StreamEntry(Entry(200, (), b"abc", ()), ((0, 2),)))


def _store_factory(
    request: pytest.FixtureRequest, kind: str, namespace: str
) -> Callable[[], Store]:
    if kind == "memory":
        return MemoryStore
    url = request.getfixturevalue("redis_url")
    request.addfinalizer(lambda: delete_namespace(url, namespace))
    return lambda: RedisStore.from_url(url, deadline=1.0)


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_any_chunking_round_trips_through_the_store_exactly(
    request: pytest.FixtureRequest, kind: str, namespace: str
) -> None:
    """Filled by the result cache, read back by its lookup: the same chunks, offsets, body."""
    make_store = _store_factory(request, kind, namespace)
    policy = Policy("/v1/chat/completions", tenant=trusted_header("x-tenant"), streams=Streams())

    @given(pieces=chunkings)
    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    def property_(pieces: list[tuple[int, bytes]]) -> None:
        async def run() -> None:
            store = make_store()
            results = ResultCache(
                store, metrics=Metrics(registry=CollectorRegistry()), max_entry_bytes=1 << 20
            )
            view = View(
                method="POST",
                path=policy.route,
                path_params={},
                headers=[(b"x-tenant", uuid.uuid4().hex.encode())],
                query_string=b"",
                body=b"",
            )
            try:
                facts = Keying(KeySpace(namespace)).request(policy, view)
                generations = await results.start_generations(await results.find(facts), facts)
                assert generations is not None
                stream = stream_of(pieces)
                await results.fill(
                    facts,
                    generations,
                    status=200,
                    headers=HEADERS,
                    body=stream.entry.body,
                    chunks=stream.chunks,
                )
                found = await results.find(facts)
                assert found.entry is not None
                assert StreamEntry(found.entry, found.chunks).pieces() == pieces
                assert found.entry.headers == HEADERS
            finally:
                await store.aclose()

        asyncio.run(run())

    property_()
