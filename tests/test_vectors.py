"""The compact vector codec: exact round trips, strict rejection, float16's measured cost."""

from __future__ import annotations

import json
import math
import random
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachegate.vectors import (
    FLOAT16_COSINE_LOSS_BOUND,
    FORMAT_VERSION,
    HEADER_SIZE,
    CorruptVector,
    DType,
    bit_agreement,
    cosine_similarity,
    decode_vector,
    encode_vector,
    widen_for_float16,
)

floats32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
floats16 = st.floats(width=16, allow_nan=False, allow_infinity=False)
INT_RANGES = {
    DType.INT8: (-128, 127),
    DType.UINT8: (0, 255),
    DType.BINARY: (-128, 127),
    DType.UBINARY: (0, 255),
}


def unit_vector(rng: random.Random, dimension: int) -> list[float]:
    """A pseudo-random unit vector of float32 values, like an embedding model's output."""
    values = [rng.gauss(0.0, 1.0) for _ in range(dimension)]
    norm = math.sqrt(math.fsum(x * x for x in values))
    stored = decode_vector(encode_vector([x / norm for x in values], DType.FLOAT32))
    return [float(x) for x in stored.values]


@given(st.lists(floats32, max_size=300))
def test_float32_round_trip_is_bit_exact(values: list[float]) -> None:
    decoded = decode_vector(encode_vector(values, DType.FLOAT32))
    assert decoded.dtype is DType.FLOAT32
    assert struct.pack(f"<{len(values)}d", *decoded.values) == struct.pack(
        f"<{len(values)}d", *values
    )


@given(st.lists(floats16, max_size=300))
def test_float16_round_trip_is_exact_for_float16_values(values: list[float]) -> None:
    decoded = decode_vector(encode_vector(values, DType.FLOAT16))
    assert decoded.dtype is DType.FLOAT16
    assert decoded.values == values


@pytest.mark.parametrize("dtype", list(INT_RANGES))
def test_integer_types_round_trip(dtype: DType) -> None:
    low, high = INT_RANGES[dtype]

    @given(st.lists(st.integers(low, high), max_size=200))
    def check(values: list[int]) -> None:
        decoded = decode_vector(encode_vector(values, dtype))
        assert decoded.dtype is dtype
        assert decoded.values == values

    check()


@given(st.lists(st.floats(-1.0, 1.0), min_size=1, max_size=100))
def test_float32_rounds_doubles_to_the_nearest_float32(values: list[float]) -> None:
    decoded = decode_vector(encode_vector(values, DType.FLOAT32)).values
    for original, stored in zip(values, decoded, strict=True):
        assert stored == struct.unpack("<f", struct.pack("<f", original))[0]
        assert abs(stored - original) <= max(abs(original) * 2.0**-24, 2.0**-150)


def test_sizes_per_1024_dimension_vector() -> None:
    """The figures in docs/embeddings.md: bytes per vector against the JSON peers store."""
    vector = unit_vector(random.Random(1), 1024)
    assert len(encode_vector(vector, DType.FLOAT32)) == HEADER_SIZE + 4096 == 4110
    assert len(encode_vector(vector, DType.FLOAT16)) == HEADER_SIZE + 2048 == 2062
    assert len(encode_vector([0] * 1024, DType.INT8)) == HEADER_SIZE + 1024
    assert len(encode_vector([0] * 128, DType.UBINARY)) == HEADER_SIZE + 128
    cohere_json = json.dumps([float(f"{x:.8g}") for x in vector])
    exact_json = json.dumps(vector)
    assert 13_000 < len(cohere_json) < 15_000
    assert 21_000 < len(exact_json) < 24_000


def test_float16_cosine_loss_stays_within_the_documented_bound() -> None:
    """Measured on deterministic pseudo-random unit vectors of the common dimensions."""
    rng = random.Random(20240501)
    losses = []
    for dimension in (256, 512, 1024, 1536):
        for _ in range(150):
            vector = unit_vector(rng, dimension)
            half = decode_vector(encode_vector(vector, DType.FLOAT16)).values
            losses.append(1.0 - cosine_similarity(vector, half))
    worst = max(losses)
    assert worst <= FLOAT16_COSINE_LOSS_BOUND
    assert 1e-9 < sum(losses) / len(losses) < 5e-8
    assert worst < 5e-8


def test_float16_threshold_is_widened_by_the_largest_rounding_angle() -> None:
    assert widen_for_float16(0.999) == pytest.approx(0.998969, abs=1e-6)
    assert widen_for_float16(1.0) < 1.0
    rng = random.Random(5)
    for _ in range(50):
        vector = unit_vector(rng, 1024)
        other = unit_vector(rng, 1024)
        # `fresh` at exactly the threshold angle from `vector`
        dot = math.fsum(a * b for a, b in zip(vector, other, strict=True))
        ortho = [b - dot * a for a, b in zip(vector, other, strict=True)]
        norm = math.sqrt(math.fsum(x * x for x in ortho))
        angle = math.acos(0.999)
        fresh = [
            math.cos(angle) * a + math.sin(angle) * b / norm
            for a, b in zip(vector, ortho, strict=True)
        ]
        half = decode_vector(encode_vector(vector, DType.FLOAT16)).values
        assert cosine_similarity(half, fresh) >= widen_for_float16(0.999)


VALID = encode_vector([0.25, -0.5, 1.0], DType.FLOAT32)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated header"),
        (b"CGV", "truncated header"),
        (VALID[: HEADER_SIZE - 1], "truncated header"),
        (VALID[:-1], "payload of"),
        (VALID + b"\x00", "payload of"),
        (b"[0.25, -0.5, 1.0]", "not a CacheGate vector"),
        (b"X" + VALID[1:], "not a CacheGate vector"),
        (VALID[:3] + bytes([FORMAT_VERSION + 1]) + VALID[4:], "format version"),
        (VALID[:4] + bytes([99]) + VALID[5:], "unknown dtype 99"),
        (VALID[:5] + b"\x01" + VALID[6:], "reserved byte"),
        (VALID[:-1] + bytes([VALID[-1] ^ 0x01]), "checksum"),
        (VALID[:6] + struct.pack("<I", 4) + VALID[10:], "payload of"),
    ],
    ids=[
        "empty",
        "magic-only",
        "short-header",
        "truncated",
        "padded",
        "json",
        "foreign-magic",
        "other-version",
        "unknown-dtype",
        "reserved",
        "bit-flip",
        "wrong-count",
    ],
)
def test_anything_but_a_vector_is_corrupt(data: bytes, reason: str) -> None:
    """Refused, and the reason names what is wrong (the header is checked in one lookup)."""
    with pytest.raises(CorruptVector, match=reason):
        decode_vector(data)


@given(st.lists(floats32, min_size=1, max_size=50), st.data())
def test_every_truncation_is_corrupt(values: list[float], data: st.DataObject) -> None:
    encoded = encode_vector(values, DType.FLOAT32)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(CorruptVector):
        decode_vector(encoded[:cut])


@pytest.mark.parametrize(
    ("values", "dtype"),
    [
        ([math.nan], DType.FLOAT32),
        ([math.inf], DType.FLOAT16),
        ([1e39], DType.FLOAT32),
        ([70_000.0], DType.FLOAT16),
        ([128], DType.INT8),
        ([-1], DType.UINT8),
        ([256], DType.UBINARY),
        ([0.5], DType.INT8),
        ([-math.inf, math.inf], DType.FLOAT32),
        ([math.nan], DType.FLOAT16),
    ],
)
def test_values_that_do_not_fit_are_refused(values: list[float], dtype: DType) -> None:
    with pytest.raises(ValueError):
        encode_vector(values, dtype)


def test_similarities() -> None:
    assert cosine_similarity([1.0, 0.0], [2.0, 0.0]) == pytest.approx(1.0)
    assert cosine_similarity([1.0, 0.0], [0.0, 1.0]) == pytest.approx(0.0)
    assert cosine_similarity([0.0, 0.0], [0.0, 0.0]) == 1.0
    with pytest.raises(ValueError):
        cosine_similarity([0.0, 0.0], [1.0, 0.0])
    with pytest.raises(ValueError):
        cosine_similarity([1.0], [1.0, 0.0])
    assert bit_agreement([0, -1], [0, -1]) == 1.0
    assert bit_agreement([0, 255], [1, 255]) == 1.0 - 1 / 16
    assert bit_agreement([-128], [127]) == 0.0
