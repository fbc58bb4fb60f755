"""Embedding types on the stored vector format (`cachegate.vectors`): pack, check, compare.

`vectors.py` stays the format (bytes and header, used by anything that reads the store); this
module knows what each Cohere embedding type may hold and how two of its vectors compare.
"""

from __future__ import annotations

from typing import Any

from cachegate.comparators import Outcome
from cachegate.embeddings.config import Storage
from cachegate.vectors import (
    CorruptVector,
    DType,
    Vector,
    bit_agreement,
    cosine_similarity,
    decode_vector,
    encode_vector,
)

INT_DTYPES = {
    "int8": DType.INT8,
    "uint8": DType.UINT8,
    "binary": DType.BINARY,
    "ubinary": DType.UBINARY,
}
CACHEABLE_TYPES = ("float", *INT_DTYPES)
"""Embedding types the cache stores; a call asking for another (`base64`) bypasses it."""
_BINARY = ("binary", "ubinary")
_FLOATS = frozenset((DType.FLOAT32, DType.FLOAT16))


def encode(kind: str, values: list[Any], storage: Storage) -> bytes:
    """Pack one vector of `kind`; float16 falls back to float32 for values beyond its range.

    Raises `ValueError` for values that do not fit (the vector is then not stored).
    """
    if kind != "float":
        return encode_vector(values, INT_DTYPES[kind])
    if storage == "float16":
        try:
            return encode_vector(values, DType.FLOAT16)
        except ValueError:
            pass
    return encode_vector(values, DType.FLOAT32)


def as_stored(values: list[Any], storage: Storage) -> list[Any]:
    """Float values at the precision they are stored in, so a miss equals every later hit."""
    return decode_vector(encode("float", values, storage)).values


def check(kind: str, vector: Vector, output_dimension: int | None) -> list[Any]:
    """A decoded vector's values if it is what a key of `kind` must hold, else `CorruptVector`."""
    if kind == "float":
        if vector.dtype not in _FLOATS:
            raise CorruptVector(f"{vector.dtype.name} stored under a float key")
    elif vector.dtype is not INT_DTYPES[kind]:
        raise CorruptVector(f"{vector.dtype.name} stored under a {kind} key")
    if not vector.values:
        raise CorruptVector("empty vector")
    if output_dimension is not None:
        length = output_dimension // 8 if kind in _BINARY else output_dimension
        if len(vector.values) != length:
            raise CorruptVector(f"{len(vector.values)} values, expected {length}")
    return vector.values


def consistent(vectors: dict[str, list[Any]]) -> bool:
    """Whether a text's stored types agree on the dimension (binary packs 8 per byte)."""
    if len(vectors) == 1:
        return True
    dimensions = {len(values) * (8 if kind in _BINARY else 1) for kind, values in vectors.items()}
    return len(dimensions) == 1


def similarity(kind: str, cached: list[Any], fresh: list[Any]) -> float:
    """Cosine for float and int8 (uint8 centred on 128), bit agreement for binary types."""
    if kind in _BINARY:
        return bit_agreement(cached, fresh)
    if kind == "uint8":
        return cosine_similarity([x - 128 for x in cached], [y - 128 for y in fresh])
    return cosine_similarity(cached, fresh)


def compare(
    cached: dict[str, list[Any]],
    fresh: dict[str, list[Any]],
    *,
    threshold: float,
    float_threshold: float,
) -> Outcome:
    """One text: a match when every type is at or above its threshold; `error` when the
    vectors cannot be compared (other lengths, one zero vector)."""
    outcome = Outcome.MATCH
    try:
        for kind, values in cached.items():
            limit = float_threshold if kind == "float" else threshold
            if similarity(kind, values, fresh[kind]) < limit:
                outcome = Outcome.MISMATCH
    except ValueError:
        return Outcome.ERROR
    return outcome
