"""A failed invalidation stays pending until a bump issued after it succeeds."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from cachegate.invalidation import Invalidator
from cachegate.keys import CacheScope, KeySpace
from cachegate.store import MemoryStore, StoreError

pytestmark = pytest.mark.anyio


class GatedStore(MemoryStore):
    """A MemoryStore whose bumps can be made to fail or to wait for a signal."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = True
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.bumps = 0

    async def bump(self, generation_keys: Sequence[str]) -> None:
        self.bumps += 1
        if self.gate is not None:
            self.entered.set()
            await self.gate.wait()
        if self.failing:
            raise StoreError("down")
        await super().bump(generation_keys)


async def test_a_retry_in_flight_does_not_clear_a_later_failure() -> None:
    store = GatedStore()
    invalidator = Invalidator(store, KeySpace("ns"), retry_interval=0.01)
    scope = CacheScope("w1", "c1")
    assert not await invalidator.invalidate(scope)
    in_flight = store.gate = asyncio.Event()
    await asyncio.wait_for(store.entered.wait(), 5)  # the retry's bump is waiting

    store.gate = None
    assert not await invalidator.invalidate(scope)  # a second write fails meanwhile
    store.failing = False
    in_flight.set()  # the older retry's bump now succeeds
    await asyncio.sleep(0.001)
    assert invalidator.is_pending(scope), "the in-flight retry predates the second failure"
    for _ in range(200):
        if not invalidator.is_pending(scope):
            break
        await asyncio.sleep(0.01)
    assert not invalidator.is_pending(scope)
    await invalidator.aclose()
