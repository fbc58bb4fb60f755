"""Embedding clients for the demo: a local deterministic one, and Cohere when `CO_API_KEY` is set.

`LocalEmbedder` has the `embed(...)` signature and response type of `cohere.AsyncClientV2`, so
`CachedEmbedder` wraps it exactly as it wraps Cohere. Its vectors are a hashed bag of words
(lower-cased tokens and bigrams signed into `dimension` buckets, unit length): crude, but similar
texts get similar vectors, and every call waits `latency` seconds like a network call would.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import math
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from cohere.types import (
    ApiMeta,
    ApiMetaApiVersion,
    ApiMetaBilledUnits,
    EmbedByTypeResponse,
    EmbedByTypeResponseEmbeddings,
)
from prometheus_client import Counter

LOCAL_MODEL = "cachegate-local-hash-256"
COHERE_MODEL = "embed-english-v3.0"
_TOKEN = re.compile(r"[a-z0-9']+")


def tokens(text: str) -> list[str]:
    """Lower-cased word tokens: case and spacing never change a vector."""
    return _TOKEN.findall(text.lower())


def hashed_vector(text: str, dimension: int) -> list[float]:
    """The unit bag-of-words vector of `text` (all zeros for a text without words)."""
    words = tokens(text)
    features = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
    vector = [0.0] * dimension
    for feature in features:
        digest = hashlib.sha256(feature.encode()).digest()
        index = int.from_bytes(digest[:4], "big") % dimension
        vector[index] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(math.fsum(x * x for x in vector))
    return [x / norm for x in vector] if norm else vector


class LocalEmbedder:
    """A deterministic stand-in for `cohere.AsyncClientV2` with a simulated `latency`."""

    def __init__(self, *, latency: float = 0.0, dimension: int = 256) -> None:
        if latency < 0 or dimension < 8:
            raise ValueError("latency must be >= 0 and dimension >= 8")
        self.latency = latency
        self.dimension = dimension

    async def embed(
        self,
        *,
        texts: Sequence[str],
        model: str,
        input_type: str,
        embedding_types: Sequence[str] | None = None,
        **options: Any,
    ) -> EmbedByTypeResponse:
        """Embed `texts` as Cohere's v2 `embed` would (types `float`, `int8`, `uint8`)."""
        kinds = list(embedding_types or ["float"])
        unknown = [kind for kind in kinds if kind not in ("float", "int8", "uint8")]
        if unknown:
            raise ValueError(f"the local embedder does not produce {', '.join(unknown)}")
        if self.latency:
            await asyncio.sleep(self.latency)
        floats = [hashed_vector(text, self.dimension) for text in texts]
        columns: dict[str, list[list[float]] | list[list[int]]] = {}
        for kind in kinds:
            if kind == "float":
                columns["float"] = floats
            else:
                offset = 128 if kind == "uint8" else 0
                columns[kind] = [[round(x * 127) + offset for x in vec] for vec in floats]
        return EmbedByTypeResponse(
            response_type="embeddings_by_type",
            id=str(uuid.uuid4()),
            embeddings=EmbedByTypeResponseEmbeddings.model_validate(columns),
            texts=list(texts),
            meta=ApiMeta(
                api_version=ApiMetaApiVersion(version="2"),
                billed_units=ApiMetaBilledUnits(
                    input_tokens=float(sum(len(tokens(text)) for text in texts))
                ),
            ),
        )


class MeteredClient:
    """Counts the calls that reach the embedding provider (fresh calls), by `input_type`."""

    def __init__(self, client: Any, calls: Counter) -> None:
        self._embed: Callable[..., Awaitable[EmbedByTypeResponse]] = client.embed
        self._calls = calls

    async def embed(self, **kwargs: Any) -> EmbedByTypeResponse:
        """Count the call, then pass it on unchanged."""
        self._calls.labels(str(kwargs.get("input_type", ""))).inc()
        return await self._embed(**kwargs)


def embed_client(environ: Mapping[str, str], *, latency: float) -> tuple[Any, str, str]:
    """(client, model, description): Cohere when `CO_API_KEY` is set, else `LocalEmbedder`.

    `CO_EMBED_MODEL` overrides the Cohere model and `CO_API_URL` its base URL.
    """
    key = environ.get("CO_API_KEY")
    if not key:
        return LocalEmbedder(latency=latency), LOCAL_MODEL, "local deterministic embedder"
    import cohere

    client = cohere.AsyncClientV2(api_key=key, base_url=environ.get("CO_API_URL") or None)
    model = environ.get("CO_EMBED_MODEL") or COHERE_MODEL
    return client, model, "Cohere"
