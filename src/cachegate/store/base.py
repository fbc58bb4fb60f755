"""The store contract shared by `MemoryStore` and `RedisStore`.

A store is a byte-level key-value store with absolute TTLs plus generation counters. Generations
start at a random value and only move forward, so a lost counter (evicted, expired, flushed) can
never repeat a value an old entry recorded: losing one only costs misses.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from cachegate.metrics import Metrics, default_metrics


class StoreError(Exception):
    """A store call failed, timed out or was refused by the breaker; the caller serves fresh."""


class StoreTimeout(StoreError):
    """A store call missed its deadline."""


class StoreUnavailable(StoreError):
    """The circuit breaker is open: the store is not asked during its cool-down."""


MISSING_GENERATION = 0
"""What a lookup reports for a generation that does not exist; no entry ever records it."""


def random_generation() -> int:
    """A random start for a new generation counter, far below the 64-bit limit."""
    return secrets.randbits(61) + 1


@dataclass(frozen=True, slots=True)
class Lookup:
    """An entry's bytes (or None) and the current generations, read together, with the epoch
    of the server that answered: a store whose state can go back in time (a Redis restarted
    from a snapshot, a promoted replica) reports a new epoch after it did; 0 for stores that
    cannot (`MemoryStore`)."""

    value: bytes | None
    generations: tuple[int, ...]
    epoch: int = 0


class StoreWritesRefused(StoreError):
    """The store refuses writes (full under `noeviction`, read-only): it cannot be trusted to
    have taken invalidations, so nothing it holds is served until a write succeeds again."""


@runtime_checkable
class Store(Protocol):
    """What the cache needs from a store. Every method may raise `StoreError`."""

    async def lookup(self, key: str, generation_keys: Sequence[str]) -> Lookup:
        """Read an entry and the current generations in one round trip (missing: 0), with
        the epoch of the state read."""
        ...

    async def generations(self, generation_keys: Sequence[str]) -> tuple[int, ...]:
        """Current generations, creating missing ones with a random start value."""
        ...

    async def write(self, key: str, value: bytes, ttl: float) -> None:
        """Store `value` under `key` for `ttl` seconds (absolute; reads never extend it)."""
        ...

    async def delete(self, key: str) -> None:
        """Remove one key (a corrupt entry, for instance)."""
        ...

    async def bump(self, generation_keys: Sequence[str]) -> None:
        """Advance each generation in one round trip: the O(1) invalidation."""
        ...

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Read many keys, in order, without touching their TTLs."""
        ...

    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl: float) -> None:
        """Write many keys with one absolute TTL."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


@runtime_checkable
class KeyedStore(Protocol):
    """A store that asks for keyed digests in its keys (`EncryptedStore`)."""

    @property
    def digest_secret(self) -> bytes:
        """The HMAC secret of every digest in the store keys the cache makes."""
        ...


def digest_secret_of(store: Store, configured: bytes | None) -> bytes | None:
    """The key secret of a cache over `store`: the configured one or the store's; never two."""
    required = store.digest_secret if isinstance(store, KeyedStore) else None
    if configured is not None and required is not None and configured != required:
        raise ValueError("key_secret differs from the store's digest_secret: give one of them")
    return configured if configured is not None else required


@runtime_checkable
class MeteredStore(Protocol):
    """A store that counts into the `Metrics` it was built with (`RedisStore`, `EncryptedStore`)."""

    @property
    def metrics(self) -> Metrics:
        """Where this store's series are counted."""
        ...


def metrics_of(store: Store, configured: Metrics | None) -> Metrics:
    """The metrics of a component over `store` (a gate, an embedder, a wrapping store): the
    configured ones or the store's, else `default_metrics()`; never two, so no series is split
    between two registries without anyone noticing."""
    own = store.metrics if isinstance(store, MeteredStore) else None
    if configured is not None and own is not None and configured is not own:
        raise ValueError(
            "metrics= differs from the metrics the store was built with: build the store with "
            "the same Metrics (e.g. RedisStore.from_url(url, metrics=metrics)), or leave "
            "metrics= out here to count into the store's"
        )
    if configured is not None:
        return configured
    return own if own is not None else default_metrics()
