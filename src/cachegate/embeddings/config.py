"""One embedder's configuration: every tunable in one frozen object, checked once.

Both embedders take it as `config=`, or its fields as keywords (`CachedEmbedder(client, store,
rollout=..., tenant=...)`), so the options are written down here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from cachegate.keys import KeySpace, Normalization
from cachegate.metrics import Metrics
from cachegate.rollout import Mode, Rollout
from cachegate.vectors import widen_for_float16

MAX_TEXTS_PER_CALL = 96
"""Cohere's limit of texts per embed call (the SDK does not enforce it; the API answers 400)."""
DEFAULT_TTL = 3600.0
DEFAULT_COST_PER_CALL = 0.002
"""Dollars per avoided Cohere call, the original service's estimate."""
DEFAULT_THRESHOLD = 0.999
"""Shadow comparisons at or above this similarity are a match (float32 storage)."""

Sharing = Literal["tenant", "global"]
"""Whose vectors a key belongs to: the call's tenant, or everyone (an explicit opt-in)."""
Storage = Literal["float32", "float16"]


@dataclass(frozen=True, slots=True)
class EmbedderConfig:
    """How an embedder caches; `scope` is the key's sharing (`"tenant"` or `"global"`).

    `rollout` decides off/shadow/serve outside a cached request (kill switch first); `mode` is
    used only without one. `key_secret` keys the digests (an `EncryptedStore` brings its own).
    `metrics` is where the embedder counts: by default the store's (`RedisStore`,
    `EncryptedStore`), else `default_metrics()`; metrics other than the store's are a
    `ValueError` when the embedder is built.
    """

    namespace: str = "cachegate"
    mode: Mode = Mode.SERVE
    rollout: Rollout | None = None
    key_secret: bytes | None = field(default=None, repr=False)
    scope: Sharing = "tenant"
    tenant: Callable[[], str | None] | None = None
    normalization: Normalization = Normalization.EXACT
    ttl: float = DEFAULT_TTL
    storage: Storage = "float32"
    batch_size: int = MAX_TEXTS_PER_CALL
    max_concurrency: int = 4
    shadow_threshold: float | None = None
    cost_per_call: float = DEFAULT_COST_PER_CALL
    metrics: Metrics | None = None
    clock: Callable[[], float] = time.perf_counter

    def __post_init__(self) -> None:
        KeySpace(self.namespace, self.key_secret)
        object.__setattr__(self, "mode", Mode(self.mode))
        if self.scope not in ("tenant", "global"):
            raise ValueError(f"scope must be 'tenant' or 'global', not {self.scope!r}")
        if self.storage not in ("float32", "float16"):
            raise ValueError(f"storage must be 'float32' or 'float16', not {self.storage!r}")
        if not 1 <= self.batch_size <= MAX_TEXTS_PER_CALL:
            raise ValueError(f"batch_size must be between 1 and {MAX_TEXTS_PER_CALL}")
        if self.max_concurrency < 1 or self.ttl <= 0 or self.cost_per_call < 0:
            raise ValueError("max_concurrency and ttl must be positive, cost_per_call >= 0")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError("shadow_threshold must be in [0, 1]")

    @classmethod
    def of(cls, config: EmbedderConfig | None, options: dict[str, Any]) -> EmbedderConfig:
        """`config` (or the defaults) with the keyword `options` a caller passed on top."""
        base = cls() if config is None else config
        return dataclasses.replace(base, **options) if options else base

    @property
    def threshold(self) -> float:
        """The similarity at or above which a shadow comparison matches (int and binary types)."""
        return DEFAULT_THRESHOLD if self.shadow_threshold is None else self.shadow_threshold

    @property
    def float_threshold(self) -> float:
        """The threshold for float vectors, widened by float16's rounding when stored so."""
        if self.storage == "float32":
            return self.threshold
        return widen_for_float16(self.threshold)
