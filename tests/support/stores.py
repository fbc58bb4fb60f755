"""`CountingStore`: a real store behind a wrapper that counts calls (one call = one round trip);
the metrics a test's gate counts into.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from prometheus_client import CollectorRegistry

from cachegate.metrics import Metrics
from cachegate.store import Lookup, Store
from cachegate.store.base import MeteredStore


def fresh_metrics() -> Metrics:
    """Metrics in a registry of their own, so a test's counts start at zero."""
    return Metrics(registry=CollectorRegistry())


def metrics_for(store: Store | None) -> Metrics:
    """The metrics a gate over `store` counts into: those the store was built with (a gate may
    not have others), or fresh ones for a store without metrics (`MemoryStore`) or none."""
    return store.metrics if isinstance(store, MeteredStore) else fresh_metrics()


class CountingStore:
    """Delegates every call to `inner` and counts it by method name; counts into `inner`'s
    metrics, if it has some, as a wrapping store does."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        if isinstance(inner, MeteredStore):
            self.metrics = inner.metrics
        self.calls: Counter[str] = Counter()

    def reset(self) -> None:
        self.calls.clear()

    async def lookup(self, key: str, generation_keys: Sequence[str]) -> Lookup:
        self.calls["lookup"] += 1
        return await self.inner.lookup(key, generation_keys)

    async def generations(self, generation_keys: Sequence[str]) -> tuple[int, ...]:
        self.calls["generations"] += 1
        return await self.inner.generations(generation_keys)

    async def write(self, key: str, value: bytes, ttl: float) -> None:
        self.calls["write"] += 1
        await self.inner.write(key, value, ttl)

    async def delete(self, key: str) -> None:
        self.calls["delete"] += 1
        await self.inner.delete(key)

    async def bump(self, generation_keys: Sequence[str]) -> None:
        self.calls["bump"] += 1
        await self.inner.bump(generation_keys)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        self.calls["get_many"] += 1
        return await self.inner.get_many(keys)

    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl: float) -> None:
        self.calls["set_many"] += 1
        await self.inner.set_many(items, ttl)

    async def aclose(self) -> None:
        await self.inner.aclose()
