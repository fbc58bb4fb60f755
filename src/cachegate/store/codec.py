"""The binary entry format: a stored response and the generations it was computed under.

Layout (big-endian): magic `CG`, format version (1 byte), status (2), generation count (1) and
each generation (8), header count (2) and each header as name length (2), name, value length
(4), value; then the body length (4) and the body, which must end the data exactly. Anything
else, truncated or padded, is a `CorruptEntry`; so is a status outside 100..599 or a header
that no HTTP server may send (a name that is not a token, a value with CR, LF, NUL or another
control byte): replayed, such an entry would break the client's connection instead of missing.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass

MAGIC = b"CG"
FORMAT_VERSION = 1
_HEAD = struct.Struct(">2sBHB")
_GEN = struct.Struct(">q")
_COUNT = struct.Struct(">H")
_NAME = struct.Struct(">H")
_VALUE = struct.Struct(">I")


_TOKEN_BYTES = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_FIELD_VALUE_BYTES = bytes([0x09, *range(0x20, 0x7F), *range(0x80, 0x100)])
_GENERATIONS = tuple(struct.Struct(f">{count}q") for count in range(256))
"""The generations of an entry, read in one call (their count is one byte)."""


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
        generations: tuple[int, ...] = _GENERATIONS[generation_count].unpack_from(data, offset)
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
            if (
                not name
                or name.translate(None, _TOKEN_BYTES)
                or value.translate(None, _FIELD_VALUE_BYTES)
            ):
                raise CorruptEntry("a header no HTTP server may send")
            headers.append((name, value))
        (body_length,) = _VALUE.unpack_from(data, offset)
        offset += _VALUE.size
    except struct.error as error:
        raise CorruptEntry("truncated entry") from error
    if offset + body_length != len(data):
        raise CorruptEntry("body length does not match the data")
    return Entry(status, tuple(headers), data[offset:], generations)


# ---- chunked entries: a streamed response, chunk boundaries and timing kept ----------------
#
# Layout (big-endian): magic `CG`, version 2, chunk count (4), then per chunk its offset from
# the response start in microseconds (8) and its length (4); then a whole version-1 entry whose
# body is the chunks joined. So every check of a version-1 entry holds for a chunked one too,
# and the chunk lengths must add up to that body exactly.

CHUNKED_VERSION = 2
_CHUNKED_HEAD = struct.Struct(">2sBI")
_CHUNK = struct.Struct(">QI")


@dataclass(frozen=True, slots=True)
class StreamEntry:
    """A cached streamed response: an `Entry` whose body was sent as `chunks`, each a pair
    (microseconds from the response start, length in bytes); the lengths add up to the body."""

    entry: Entry
    chunks: tuple[tuple[int, int], ...]

    def pieces(self) -> list[tuple[int, bytes]]:
        """Each chunk as (offset in microseconds, bytes), in order."""
        pieces, at = [], 0
        for offset, length in self.chunks:
            pieces.append((offset, self.entry.body[at : at + length]))
            at += length
        return pieces


def encode_stream_entry(stream: StreamEntry) -> bytes:
    """Pack a chunked entry into its binary form."""
    if sum(length for _, length in stream.chunks) != len(stream.entry.body):
        raise ValueError("chunk lengths do not add up to the body")
    return b"".join(
        [
            _CHUNKED_HEAD.pack(MAGIC, CHUNKED_VERSION, len(stream.chunks)),
            *(_CHUNK.pack(offset, length) for offset, length in stream.chunks),
            encode_entry(stream.entry),
        ]
    )


def decode_stored(data: bytes) -> Entry | StreamEntry:
    """Unpack an entry of either kind: version 1 (whole) or 2 (chunked); `CorruptEntry` else."""
    if data[:2] == MAGIC and data[2:3] == bytes([CHUNKED_VERSION]):
        return _decode_stream_entry(data)
    return decode_entry(data)


def _decode_stream_entry(data: bytes) -> StreamEntry:
    try:
        _, _, count = _CHUNKED_HEAD.unpack_from(data, 0)
        offset = _CHUNKED_HEAD.size
        chunks = tuple(_CHUNK.unpack_from(data, offset + i * _CHUNK.size) for i in range(count))
    except struct.error as error:
        raise CorruptEntry("truncated chunk table") from error
    entry = decode_entry(data[offset + count * _CHUNK.size :])
    if sum(length for _, length in chunks) != len(entry.body):
        raise CorruptEntry("chunk lengths do not match the body")
    if any(later < earlier for (earlier, _), (later, _) in itertools.pairwise(chunks)):
        raise CorruptEntry("chunk offsets go back in time")
    return StreamEntry(entry, chunks)
