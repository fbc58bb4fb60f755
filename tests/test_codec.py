"""The binary entry format: exact round trips; anything else is a `CorruptEntry`."""

from __future__ import annotations

import json
import pickle
import struct
from dataclasses import replace

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

TOKEN = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
FIELD_BYTES = [9, *range(0x20, 0x7F), *range(0x80, 0x100)]
header_names = st.lists(st.sampled_from(TOKEN), min_size=1, max_size=40).map(bytes)
header_values = st.lists(st.sampled_from(FIELD_BYTES), max_size=200).map(bytes)
entries = st.builds(
    Entry,
    status=st.integers(min_value=100, max_value=599),
    headers=st.lists(st.tuples(header_names, header_values), max_size=8).map(tuple),
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


@given(
    entry=entries,
    status=st.one_of(st.integers(0, 99), st.integers(600, 2**16 - 1)),
)
@settings(deadline=None)
def test_a_status_outside_100_to_599_is_corrupt(entry: Entry, status: int) -> None:
    with pytest.raises(CorruptEntry):
        decode_entry(encode_entry(replace(entry, status=status)))


@given(
    entry=entries,
    name=header_names,
    value=header_values,
    bad=st.sampled_from([b"\r", b"\n", b"\x00", b"\x7f", b"\x01"]),
    where=st.sampled_from(["name", "value"]),
    data=st.data(),
)
@settings(deadline=None)
def test_a_header_with_cr_lf_nul_or_a_control_byte_is_corrupt(
    entry: Entry, name: bytes, value: bytes, bad: bytes, where: str, data: st.DataObject
) -> None:
    """Replayed, such a header breaks the client's connection (or splits the response)."""
    target = name if where == "name" else value
    cut = data.draw(st.integers(0, len(target)))
    target = target[:cut] + bad + target[cut:]
    header = (target, value) if where == "name" else (name, target)
    with pytest.raises(CorruptEntry):
        decode_entry(encode_entry(replace(entry, headers=(*entry.headers, header))))


@pytest.mark.parametrize("name", [b"", b"a b", b"a:b", "é".encode()])
def test_a_header_name_that_is_not_a_token_is_corrupt(name: bytes) -> None:
    with pytest.raises(CorruptEntry):
        decode_entry(encode_entry(Entry(200, ((name, b"v"),), b"", (1,))))
