"""The compact vector format of the L2 cache: one embedding as packed bytes behind a small header.

Layout (little-endian): magic `CGV` (3 bytes), format version (1), dtype (1), reserved (1, zero),
element count (4), CRC-32 of the payload (4), then the payload: `count` elements of the dtype's
size. A 1024-dimension float32 vector is 14 + 4096 bytes; as float16, 14 + 2048. Anything
truncated, padded, foreign, of another version or failing its checksum is a `CorruptVector`.

float32 round-trips float32 values bit for bit; a Python float that is not a float32 value is
rounded to the nearest one (relative error at most 2**-24), which is the precision embedding
models compute in. float16 is opt-in: it halves the payload and bounds the cosine loss by
`FLOAT16_COSINE_LOSS_BOUND` (see `docs/embeddings.md` for the measured figures).
"""

from __future__ import annotations

import math
import operator
import struct
import sys
import zlib
from array import array
from collections.abc import Sequence
from enum import IntEnum
from typing import NamedTuple

MAGIC = b"CGV"
FORMAT_VERSION = 1
_HEAD = struct.Struct("<3sBBBII")
HEADER_SIZE = _HEAD.size
"""Bytes before the payload (14)."""

FLOAT16_COSINE_LOSS_BOUND = 2.0**-22
"""Upper bound on `1 - cos(v, float16(v))` for a unit-norm vector of up to 65 536 dimensions.

Each component in float16's normal range is rounded with relative error at most 2**-11, one in
its subnormal range with absolute error at most 2**-25; so `|e| / |v| = s` with
`s**2 <= 2**-22 + n * 2**-50` and `1 - cos <= 1 - sqrt(1 - s**2) <= s**2 / 2 + s**4 / 2`,
below 2**-22. The tests check it on pseudo-random unit vectors and measure the typical loss."""

_LITTLE = sys.byteorder == "little"


class CorruptVector(ValueError):
    """Stored bytes that are not a vector of this format version."""


class DType(IntEnum):
    """How the elements of a stored vector are packed (the byte in the header)."""

    FLOAT32 = 1
    FLOAT16 = 2
    INT8 = 3
    UINT8 = 4
    BINARY = 5
    """Packed signed bits as Cohere returns them: bytes as int8 values."""
    UBINARY = 6
    """Packed unsigned bits: bytes as uint8 values."""

    @property
    def is_float(self) -> bool:
        """Whether the elements are floats (else ints)."""
        return self in (DType.FLOAT32, DType.FLOAT16)


_ITEMSIZE = {
    DType.FLOAT32: 4,
    DType.FLOAT16: 2,
    DType.INT8: 1,
    DType.UINT8: 1,
    DType.BINARY: 1,
    DType.UBINARY: 1,
}
_PREFIXES = {MAGIC + bytes((FORMAT_VERSION, dtype, 0)): dtype for dtype in DType}
"""The six bytes a valid header starts with, by dtype: one lookup checks magic, version,
dtype and the reserved byte."""
_SIZES = struct.Struct("<II")
"""Element count and CRC-32, after the prefix."""
_ARRAY_CODE = {
    DType.FLOAT32: "f",
    DType.INT8: "b",
    DType.UINT8: "B",
    DType.BINARY: "b",
    DType.UBINARY: "B",
}


class Vector(NamedTuple):
    """A decoded vector: its stored dtype and its elements (floats or ints)."""

    dtype: DType
    values: list[float] | list[int]


def encode_vector(values: Sequence[float] | Sequence[int], dtype: DType) -> bytes:
    """Pack `values` as `dtype` behind the header.

    Raises `ValueError` when a value does not fit the dtype (an int out of range, a float that
    is not finite or overflows float32/float16), so nothing lossy beyond rounding is ever stored.
    """
    payload = _pack(values, dtype)
    header = _HEAD.pack(MAGIC, FORMAT_VERSION, dtype, 0, len(values), zlib.crc32(payload))
    return header + payload


def decode_vector(data: bytes) -> Vector:
    """Unpack a stored vector; raise `CorruptVector` if it is not one of this format version."""
    dtype = _PREFIXES.get(data[:6])
    if dtype is None or len(data) < HEADER_SIZE:
        raise _header_fault(data)
    count, crc = _SIZES.unpack_from(data, 6)
    payload = memoryview(data)[HEADER_SIZE:]
    if len(payload) != count * _ITEMSIZE[dtype]:
        raise CorruptVector(f"payload of {len(payload)} bytes for {count} x {dtype.name}")
    if zlib.crc32(payload) != crc:
        raise CorruptVector("checksum mismatch")
    return Vector(dtype, _unpack(payload, dtype, count))


def _header_fault(data: bytes) -> CorruptVector:
    """What is wrong with a header that does not start as a valid one does."""
    if len(data) < HEADER_SIZE:
        return CorruptVector("truncated header")
    magic, version, code = _HEAD.unpack_from(data, 0)[:3]
    if magic != MAGIC:
        return CorruptVector("not a CacheGate vector")
    if version != FORMAT_VERSION:
        return CorruptVector(f"vector format version {version}, expected {FORMAT_VERSION}")
    if code not in {dtype.value for dtype in DType}:
        return CorruptVector(f"unknown dtype {code}")
    return CorruptVector("reserved byte set")


def _pack(values: Sequence[float] | Sequence[int], dtype: DType) -> bytes:
    if dtype is DType.FLOAT16:
        try:
            payload = struct.pack(f"<{len(values)}e", *values)
        except (OverflowError, struct.error) as error:
            raise ValueError(f"value out of float16 range: {error}") from error
        if not math.isfinite(sum(values)):
            raise ValueError("float vectors must hold finite numbers only")
        return payload
    try:
        packed = array(_ARRAY_CODE[dtype], values)
    except (OverflowError, TypeError) as error:
        raise ValueError(f"value does not fit {dtype.name}: {error}") from error
    if dtype is DType.FLOAT32 and not math.isfinite(sum(packed)):
        # float32 values sum far below the double range: only inf or nan makes this non-finite
        raise ValueError("float vectors must hold finite float32 numbers only")
    if not _LITTLE:
        packed.byteswap()
    return packed.tobytes()


def _unpack(payload: memoryview, dtype: DType, count: int) -> list[float] | list[int]:
    if dtype is DType.FLOAT16:
        return list(struct.unpack(f"<{count}e", payload))
    unpacked = array(_ARRAY_CODE[dtype])
    unpacked.frombytes(payload)
    if not _LITTLE:
        unpacked.byteswap()
    return unpacked.tolist()


def cosine_similarity(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine of the angle between two equally long vectors (1.0 for two zero vectors).

    Raises `ValueError` for different lengths or when exactly one vector is zero.
    """
    if len(a) != len(b):
        raise ValueError(f"lengths differ: {len(a)} != {len(b)}")
    dot: float = sum(map(operator.mul, a, b))
    norm_a = math.sqrt(sum(map(operator.mul, a, a)))
    norm_b = math.sqrt(sum(map(operator.mul, b, b)))
    if norm_a == 0.0 or norm_b == 0.0:
        if norm_a == norm_b:
            return 1.0
        raise ValueError("cosine with a zero vector")
    return dot / (norm_a * norm_b)


def bit_agreement(a: Sequence[int], b: Sequence[int]) -> float:
    """Share of equal bits of two packed binary vectors (bytes as int8 or uint8 values)."""
    if len(a) != len(b):
        raise ValueError(f"lengths differ: {len(a)} != {len(b)}")
    if not a:
        return 1.0
    differing = sum(((x ^ y) & 0xFF).bit_count() for x, y in zip(a, b, strict=True))
    return 1.0 - differing / (8 * len(a))


def widen_for_float16(threshold: float) -> float:
    """The cosine threshold to use on float16-stored vectors in place of `threshold`.

    Angles add: if the fresh vector is within `acos(threshold)` of the original, its float16
    copy is within that plus the largest angle float16 rounding adds (`acos(1 - bound)`).
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError("threshold must be in [0, 1]")
    angle = math.acos(threshold) + math.acos(1.0 - FLOAT16_COSINE_LOSS_BOUND)
    return math.cos(min(angle, math.pi))
