"""The binary entry format: exact round trips; anything else is a `CorruptEntry`."""

from __future__ import annotations

import json
import pickle
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cachegate.store.codec import (
    FORMAT_VERSION,
    MAGIC,
    CorruptEntry,
    Entry,
    decode_entry,
    encode_entry,
)

header_names = st.binary(min_size=1, max_size=40)
entries = st.builds(
    Entry,
    status=st.integers(min_value=100, max_value=599),
    headers=st.lists(st.tuples(header_names, st.binary(max_size=200)), max_size=8).map(tuple),
    body=st.binary(max_size=4000),
    generations=st.lists(st.integers(min_value=1, max_value=2**62), max_size=4).map(tuple),
)


@given(entry=entries)
@settings(deadline=None)
def test_round_trip(entry: Entry) -> None:
    data = encode_entry(entry)
    assert decode_entry(data) == entry
    assert data[:3] == MAGIC + bytes([FORMAT_VERSION])


def test_compact_binary_not_json_of_base64() -> None:
    body = bytes(range(256)) * 4
    data = encode_entry(Entry(200, ((b"content-type", b"application/octet-stream"),), body, (7, 9)))
    assert body in data  # stored as is
    assert len(data) < len(body) + 100


@given(entry=entries, data=st.data())
@settings(deadline=None)
def test_truncated_entries_are_corrupt(entry: Entry, data: st.DataObject) -> None:
    encoded = encode_entry(entry)
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    with pytest.raises(CorruptEntry):
        decode_entry(encoded[:cut])


@given(entry=entries, padding=st.binary(min_size=1, max_size=50))
@settings(deadline=None)
def test_padded_entries_are_corrupt(entry: Entry, padding: bytes) -> None:
    with pytest.raises(CorruptEntry):
        decode_entry(encode_entry(entry) + padding)


@given(entry=entries, version=st.integers(min_value=0, max_value=255))
@settings(deadline=None)
def test_other_format_versions_are_corrupt(entry: Entry, version: int) -> None:
    encoded = bytearray(encode_entry(entry))
    if version == FORMAT_VERSION:
        return
    encoded[2] = version
    with pytest.raises(CorruptEntry):
        decode_entry(bytes(encoded))


@pytest.mark.parametrize(
    "foreign",
    [
        b"",
        b"C",
        b"CG",
        b'{"status": 200, "body": "aGVsbG8="}',
        json.dumps({"answer": 42}).encode(),
        pickle.dumps({"status": 200}),
        b"\x00" * 64,
        b"GC\x01" + b"\x00" * 20,
        "ответ".encode(),
    ],
)
def test_foreign_bytes_are_corrupt(foreign: bytes) -> None:
    with pytest.raises(CorruptEntry):
        decode_entry(foreign)


@given(st.binary(max_size=200).filter(lambda b: not b.startswith(MAGIC)))
@settings(deadline=None)
def test_random_bytes_without_the_magic_are_corrupt(data: bytes) -> None:
    with pytest.raises(CorruptEntry):
        decode_entry(data)


def test_a_header_length_past_the_end_is_corrupt() -> None:
    good = encode_entry(Entry(200, ((b"a", b"b"),), b"body", (1,)))
    # the header's value length field claims more bytes than there are
    head = 2 + 1 + 2 + 1 + 8 + 2 + 2 + 1
    bad = good[:head] + struct.pack(">I", 10_000) + good[head + 4 :]
    with pytest.raises(CorruptEntry):
        decode_entry(bad)


def test_corrupt_entry_is_a_value_error() -> None:
    assert issubclass(CorruptEntry, ValueError)
