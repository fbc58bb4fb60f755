"""The L2 cache: Cohere embeddings per text, batch-aware, model-aware, compact, tenant-scoped.

`CachedEmbedder` wraps `cohere.AsyncClientV2` and `CachedEmbedderSync` wraps `cohere.ClientV2`;
both return the SDK's own `EmbedByTypeResponse`. Needs the `cachegate[cohere]` extra.

Modules: `config` (one `EmbedderConfig`), `keys` (vector keys on `cachegate.keys`), `plan`
(a call's distinct texts and keys), `codec` (embedding types on `cachegate.vectors`),
`accounting` (the one counting call), `cohere` (the SDK's side), `core` (the cache logic),
`clients` (the two embedders).
"""

from cachegate.embeddings.accounting import EmbedderStats
from cachegate.embeddings.clients import CachedEmbedder, CachedEmbedderSync
from cachegate.embeddings.codec import CACHEABLE_TYPES
from cachegate.embeddings.cohere import AsyncEmbedClient, SyncEmbedClient, UnexpectedResponse
from cachegate.embeddings.config import (
    DEFAULT_COST_PER_CALL,
    DEFAULT_THRESHOLD,
    DEFAULT_TTL,
    MAX_TEXTS_PER_CALL,
    EmbedderConfig,
)
from cachegate.embeddings.keys import PROVIDER, VectorKeys, vector_key
from cachegate.embeddings.plan import FORWARDED_OPTIONS, KEYED_OPTIONS

__all__ = [
    "CACHEABLE_TYPES",
    "DEFAULT_COST_PER_CALL",
    "DEFAULT_THRESHOLD",
    "DEFAULT_TTL",
    "FORWARDED_OPTIONS",
    "KEYED_OPTIONS",
    "MAX_TEXTS_PER_CALL",
    "PROVIDER",
    "AsyncEmbedClient",
    "CachedEmbedder",
    "CachedEmbedderSync",
    "EmbedderConfig",
    "EmbedderStats",
    "SyncEmbedClient",
    "UnexpectedResponse",
    "VectorKeys",
    "vector_key",
]
