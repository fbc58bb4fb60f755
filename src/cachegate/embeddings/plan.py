"""Planning one `embed` call: is it cacheable, which distinct texts, which keys, which positions.

Repeated texts of a call are embedded and looked up once (by their normalised form when the
cache is used); every caller position points at its distinct text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Required, TypedDict

from cachegate.embeddings.codec import CACHEABLE_TYPES
from cachegate.embeddings.keys import VectorKeys
from cachegate.keys import Normalization, normalize_text

KEYED_OPTIONS = ("max_tokens",)
"""Extra `embed` arguments that change the vectors: part of the key."""
FORWARDED_OPTIONS = ("priority", "request_options")
"""Extra `embed` arguments that do not change the vectors: passed on, not keyed."""
_ALLOWED = frozenset(
    (
        *("texts", "model", "input_type", "embedding_types", "output_dimension", "truncate"),
        *KEYED_OPTIONS,
        *FORWARDED_OPTIONS,
    )
)


@dataclass(frozen=True, slots=True)
class Call:
    """One `embed` call, planned: distinct texts, their keys, and the caller's positions."""

    texts: list[str]
    types: tuple[str, ...]
    options: dict[str, Any]
    """The call's arguments but `texts`, passed on to Cohere with each chunk's texts."""
    positions: list[int]
    """For each caller position, the index of its distinct text."""
    unique: list[str]
    """Distinct texts as sent to Cohere (the first original of each)."""
    keys: list[list[str]]
    """For each distinct text, one key per type (empty when the cache is not used)."""
    output_dimension: int | None


class EmbedCall(TypedDict, total=False):
    """The arguments of `embed`: the client's own, plus the cache's `tenant`."""

    texts: Required[Sequence[str]]
    model: Required[str]
    input_type: Required[str]
    embedding_types: Sequence[str] | None
    output_dimension: int | None
    truncate: str | None
    max_tokens: int
    priority: int
    request_options: Any
    tenant: str | None


_DROPPED_WHEN_NONE = ("embedding_types", "output_dimension", "truncate")


def arguments(call: EmbedCall) -> tuple[str | None, dict[str, Any]]:
    """The call's tenant and the `embed` keyword arguments to pass on (options left as None
    are not sent)."""
    kwargs: dict[str, Any] = dict(call)
    tenant = kwargs.pop("tenant", None)
    for name in _DROPPED_WHEN_NONE:
        if name in kwargs and kwargs[name] is None:
            del kwargs[name]
    return tenant, kwargs


def cacheable_types(kwargs: dict[str, Any]) -> tuple[str, ...] | None:
    """The distinct embedding types of a plain text call the cache understands, else None."""
    texts = kwargs.get("texts")
    if not (
        isinstance(texts, list | tuple)
        and len(texts) > 0
        and all(isinstance(text, str) for text in texts)
        and set(kwargs) <= _ALLOWED
        and isinstance(kwargs.get("model"), str)
        and isinstance(kwargs.get("input_type"), str)
        and isinstance(kwargs.get("output_dimension", 0), int)
        and isinstance(kwargs.get("truncate", ""), str)
        and isinstance(kwargs.get("max_tokens", 0), int)
    ):
        return None
    requested = kwargs.get("embedding_types")
    if requested is None:
        return ("float",)
    if isinstance(requested, str) or not isinstance(requested, list | tuple) or not requested:
        return None
    types = tuple(dict.fromkeys(requested))
    if not all(isinstance(kind, str) and kind in CACHEABLE_TYPES for kind in types):
        return None
    return types


def plan(
    kwargs: dict[str, Any],
    types: tuple[str, ...],
    keys: Sequence[VectorKeys] | None,
) -> Call:
    """Deduplicate a cacheable call's texts; with `keys` (one builder per type) key each one."""
    texts = list(kwargs["texts"])
    options = {name: value for name, value in kwargs.items() if name != "texts"}
    dimension = kwargs.get("output_dimension")
    normalization = keys[0].normalization if keys else Normalization.EXACT
    if normalization is Normalization.EXACT and len(set(texts)) == len(texts):  # no repeats
        positions, unique, identities = list(range(len(texts))), texts, texts
    else:
        positions, unique, identities = _distinct(texts, normalization)
    columns = [builder.keys(identities) for builder in keys or ()]
    keyed = [list(row) for row in zip(*columns, strict=True)]
    output_dimension = dimension if isinstance(dimension, int) else None
    return Call(texts, types, options, positions, unique, keyed, output_dimension)


def _distinct(
    texts: list[str], normalization: Normalization
) -> tuple[list[int], list[str], list[str]]:
    """Each text's slot, the distinct texts (first originals) and their normalised forms."""
    normalizing = normalization is not Normalization.EXACT
    index: dict[str, int] = {}
    positions: list[int] = []
    unique: list[str] = []
    identities: list[str] = []
    for text in texts:
        identity = normalize_text(text, normalization) if normalizing else text
        slot = index.get(identity)
        if slot is None:
            slot = index[identity] = len(unique)
            unique.append(text)
            identities.append(identity)
        positions.append(slot)
    return positions, unique, identities


def key_builders(
    kwargs: dict[str, Any],
    types: tuple[str, ...],
    *,
    namespace: str,
    tenant: str | None,
    normalization: Normalization,
    secret: bytes | None,
) -> list[VectorKeys]:
    """One key builder per embedding type for a call's model and options."""
    dimension = kwargs.get("output_dimension")
    return [
        _key_builder(
            namespace,
            model=kwargs["model"],
            input_type=kwargs["input_type"],
            embedding_type=kind,
            tenant=tenant,
            output_dimension=dimension if isinstance(dimension, int) else None,
            truncate=kwargs.get("truncate"),
            max_tokens=kwargs.get("max_tokens"),
            normalization=normalization,
            secret=secret,
        )
        for kind in types
    ]


_key_builder = lru_cache(maxsize=1024, typed=True)(VectorKeys)
"""`VectorKeys`, made once per model, options and tenant (its parts are encoded once); typed,
as `True` and `1` are different options."""
