"""The Cohere SDK's side: the clients the embedders wrap, reading vectors out of a response and
building the SDK's own `EmbedByTypeResponse` for a call answered partly or wholly from the cache.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

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
        ApiMetaApiVersion(version="2"),
    )
    return EmbedByTypeResponse(
        response_type="embeddings_by_type",
        id=str(uuid.uuid4()),
        embeddings=EmbedByTypeResponseEmbeddings.model_validate(columns),
        texts=texts,
        meta=ApiMeta(
            api_version=version,
            billed_units=ApiMetaBilledUnits(input_tokens=tokens),
        ),
    )
