"""The binary entry format: a stored response and the generations it was computed under.

Layout (big-endian): magic `CG`, format version (1 byte), status (2), generation count (1) and
each generation (8), header count (2) and each header as name length (2), name, value length
(4), value; then the body length (4) and the body, which must end the data exactly. Anything
else, truncated or padded, is a `CorruptEntry`; so is a status outside 100..599 or a header
that no HTTP server may send (a name that is not a token, a value with CR, LF, NUL or another
control byte): replayed, such an entry would break the client's connection instead of missing.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

MAGIC = b"CG"
FORMAT_VERSION = 1
_HEAD = struct.Struct(">2sBHB")
_GEN = struct.Struct(">q")
_COUNT = struct.Struct(">H")
_NAME = struct.Struct(">H")
_VALUE = struct.Struct(">I")


_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")


class CorruptEntry(ValueError):
    """Stored bytes that are not an entry of this format version."""


@dataclass(frozen=True, slots=True)
class Entry:
    """A cached response: status, headers (raw ASGI pairs) and body, with its generations."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    generations: tuple[int, ...]


def encode_entry(entry: Entry) -> bytes:
    """Pack an entry into its binary form."""
    parts = [
        _HEAD.pack(MAGIC, FORMAT_VERSION, entry.status, len(entry.generations)),
        *(_GEN.pack(generation) for generation in entry.generations),
        _COUNT.pack(len(entry.headers)),
    ]
    for name, value in entry.headers:
        parts += (_NAME.pack(len(name)), name, _VALUE.pack(len(value)), value)
    parts += (_VALUE.pack(len(entry.body)), entry.body)
    return b"".join(parts)


def decode_entry(data: bytes) -> Entry:
    """Unpack an entry; raise `CorruptEntry` if truncated, foreign or of another version."""
    try:
        magic, version, status, generation_count = _HEAD.unpack_from(data, 0)
        if magic != MAGIC or version != FORMAT_VERSION:
            raise CorruptEntry("not a CacheGate entry of this format version")
        if not 100 <= status <= 599:
            raise CorruptEntry("not an HTTP status")
        offset = _HEAD.size
        generations = tuple(
            _GEN.unpack_from(data, offset + i * _GEN.size)[0] for i in range(generation_count)
        )
        offset += generation_count * _GEN.size
        (header_count,) = _COUNT.unpack_from(data, offset)
        offset += _COUNT.size
        headers = []
        for _ in range(header_count):
            (name_length,) = _NAME.unpack_from(data, offset)
            offset += _NAME.size
            name = data[offset : offset + name_length]
            offset += name_length
            (value_length,) = _VALUE.unpack_from(data, offset)
            offset += _VALUE.size
            value = data[offset : offset + value_length]
            offset += value_length
            if len(name) != name_length or len(value) != value_length:
                raise CorruptEntry("truncated header")
            if _TOKEN.fullmatch(name) is None or _FIELD_VALUE.fullmatch(value) is None:
                raise CorruptEntry("a header no HTTP server may send")
            headers.append((name, value))
        (body_length,) = _VALUE.unpack_from(data, offset)
        offset += _VALUE.size
    except struct.error as error:
        raise CorruptEntry("truncated entry") from error
    if offset + body_length != len(data):
        raise CorruptEntry("body length does not match the data")
    return Entry(status, tuple(headers), data[offset:], generations)
