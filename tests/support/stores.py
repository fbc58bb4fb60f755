"""`CountingStore`: a real store behind a wrapper that counts calls (one call = one round trip)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from cachegate.store import Lookup, Store


class CountingStore:
    """Delegates every call to `inner` and counts it by method name."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
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
