"""The Cohere SDK's side: the clients the embedders wrap, reading vectors out of a response and
building the SDK's own `EmbedByTypeResponse` for a call answered partly or wholly from the cache.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import pydantic
from cohere.types import (
    ApiMeta,
    ApiMetaApiVersion,
    ApiMetaBilledUnits,
    EmbedByTypeResponse,
    EmbedByTypeResponseEmbeddings,
)


class AsyncEmbedClient(Protocol):
    """What `CachedEmbedder` needs: `cohere.AsyncClientV2` or anything with its `embed`."""

    @property
    def embed(self) -> Callable[..., Awaitable[EmbedByTypeResponse]]:
        """The client's `embed` coroutine function."""
        ...


class SyncEmbedClient(Protocol):
    """What `CachedEmbedderSync` needs: `cohere.ClientV2` or anything with its `embed`."""

    @property
    def embed(self) -> Callable[..., EmbedByTypeResponse]:
        """The client's blocking `embed` method."""
        ...


class UnexpectedResponse(Exception):
    """Cohere answered 2xx without the vectors asked for (a missing type or a wrong count)."""


def vectors_of(
    response: EmbedByTypeResponse, types: tuple[str, ...], count: int
) -> dict[str, list[Any]]:
    """Each asked type's vectors from a Cohere response, checked to be one per text."""
    embeddings = response.embeddings
    result: dict[str, list[Any]] = {}
    for kind in types:
        vectors = getattr(embeddings, "float_" if kind == "float" else kind, None)
        if not isinstance(vectors, list) or len(vectors) != count:
            raise UnexpectedResponse(f"expected {count} {kind} embeddings")
        result[kind] = vectors
    return result


def billed_tokens(response: EmbedByTypeResponse) -> float:
    """The input tokens Cohere billed for one call (0 when it does not say)."""
    meta = response.meta
    if meta is None or meta.billed_units is None or meta.billed_units.input_tokens is None:
        return 0.0
    return float(meta.billed_units.input_tokens)


M = TypeVar("M", bound=pydantic.BaseModel)
_PYDANTIC_CONSTRUCT = (
    pydantic.BaseModel.model_construct.__func__  # type: ignore[attr-defined]
    if pydantic.VERSION.startswith("2.")
    else None
)


def _built(model: type[M], values: dict[str, Any], aliased: dict[str, Any]) -> M:
    """`model` from values that already have its field types, without validating each float.

    The SDK's own `model_construct` walks every element; pydantic's does not. The values are
    lists the cache itself decoded (or Cohere's validated ones), so validation would only copy
    them. Without pydantic 2 (the SDK also runs on 1) the model is validated as before.
    """
    if _PYDANTIC_CONSTRUCT is None:
        return model.model_validate(aliased)
    built: M = _PYDANTIC_CONSTRUCT(model, **values)
    return built


def response(
    columns: dict[str, list[list[Any]]],
    texts: list[str],
    fresh: list[EmbedByTypeResponse],
    tokens: float,
) -> EmbedByTypeResponse:
    """The SDK's response for a call: one column of vectors per type, in the caller's order;
    the API version of the fresh responses if any, and the tokens they billed."""
    version = next(
        (r.meta.api_version for r in fresh if r.meta and r.meta.api_version),
        None,
    )
    if version is None:
        version = _built(ApiMetaApiVersion, {"version": "2"}, {"version": "2"})
    fields = {("float_" if kind == "float" else kind): vectors for kind, vectors in columns.items()}
    tokens_used = {"input_tokens": tokens}
    billed = _built(ApiMetaBilledUnits, tokens_used, tokens_used)
    meta = {"api_version": version, "billed_units": billed}
    whole = {
        "response_type": "embeddings_by_type",
        "id": str(uuid.uuid4()),
        "embeddings": _built(EmbedByTypeResponseEmbeddings, fields, columns),
        "texts": texts,
        "meta": _built(ApiMeta, meta, meta),
    }
    return _built(EmbedByTypeResponse, whole, whole)
