"""`MemoryStore`: the embedded store for one process, bounded in bytes, LRU, absolute TTL.

`max_bytes` bounds the real heap the store's items take (within a few percent, measured), not
only their keys and values: each item is charged `ITEM_OVERHEAD` bytes on top.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from cachegate.store.base import MISSING_GENERATION, Lookup, random_generation

ITEM_OVERHEAD = 320
"""Bytes charged per item on top of key and value: what CPython really spends on one (the key's
str and the value's bytes headers, the item tuple, its expiry float and size int, and the
ordered dict's share, measured with tracemalloc at steady state; `tests/test_memory_bound.py`
keeps the heap within 1.25x of `max_bytes` for small and large entries alike)."""


class MemoryStore:
    """An in-process store. Generations live in the same LRU: evicting one only costs misses."""

    def __init__(
        self,
        *,
        max_bytes: int = 64 * 1024 * 1024,
        generation_ttl: float = 86_400.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self.generation_ttl = generation_ttl
        self._clock = clock
        self._items: OrderedDict[str, tuple[bytes | int, float, int]] = OrderedDict()
        self._bytes = 0

    @property
    def size_bytes(self) -> int:
        """Bytes charged for the items held now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def _get(self, key: str) -> bytes | int | None:
        item = self._items.get(key)
        if item is None:
            return None
        value, expires_at, _ = item
        if expires_at <= self._clock():
            self._remove(key)
            return None
        self._items.move_to_end(key)
        return value

    def _put(self, key: str, value: bytes | int, ttl: float) -> None:
        size = len(key) + (len(value) if isinstance(value, bytes) else 8) + ITEM_OVERHEAD
        self._remove(key)
        if size > self.max_bytes or ttl <= 0:
            return
        self._items[key] = (value, self._clock() + ttl, size)
        self._bytes += size
        while self._bytes > self.max_bytes:
            oldest = next(iter(self._items))
            self._remove(oldest)

    def _remove(self, key: str) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self._bytes -= item[2]

    def _generation(self, key: str) -> int:
        value = self._get(key)
        return value if isinstance(value, int) else MISSING_GENERATION

    async def lookup(self, key: str, generation_keys: Sequence[str]) -> Lookup:
        """The entry and current generations (0 for a missing one)."""
        value = self._get(key)
        entry = value if isinstance(value, bytes) else None
        return Lookup(entry, tuple(self._generation(k) for k in generation_keys))

    async def generations(self, generation_keys: Sequence[str]) -> tuple[int, ...]:
        """Current generations, creating missing ones at a random start."""
        result = []
        for key in generation_keys:
            generation = self._generation(key)
            if generation == MISSING_GENERATION:
                generation = random_generation()
                self._put(key, generation, self.generation_ttl)
            result.append(generation)
        return tuple(result)

    async def write(self, key: str, value: bytes, ttl: float) -> None:
        """Store bytes with an absolute TTL."""
        self._put(key, value, ttl)

    async def delete(self, key: str) -> None:
        """Remove one key."""
        self._remove(key)

    async def bump(self, generation_keys: Sequence[str]) -> None:
        """Advance each generation (a missing one restarts at a random value)."""
        for key in generation_keys:
            generation = self._generation(key)
            start = generation if generation != MISSING_GENERATION else random_generation()
            self._put(key, start + 1, self.generation_ttl)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Read many keys in order."""
        values = [self._get(key) for key in keys]
        return [value if isinstance(value, bytes) else None for value in values]

    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl: float) -> None:
        """Write many keys with one TTL."""
        for key, value in items:
            self._put(key, value, ttl)

    async def aclose(self) -> None:
        """Nothing to release."""
