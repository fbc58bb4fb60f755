"""`MemoryStore(max_bytes=...)` bounds the real heap, not only keys and values (issue 11, item 8).

The store is filled well past its bound (so it evicts, as it does in service) with small and
with large entries, and the heap growth tracemalloc sees is compared with `max_bytes`.
"""

from __future__ import annotations

import gc
import random
import tracemalloc

import pytest

from cachegate.store import MemoryStore

pytestmark = pytest.mark.anyio

MAX_BYTES = 4 * 1024 * 1024


def entry_key(index: int) -> str:
    """A key shaped like an L1 entry key (namespace, hash tag, SHA-256 hex)."""
    return f"cgtest-0123456789ab:e:{{t{index % 97:04d}}}:{index:064x}"


@pytest.mark.parametrize(
    "sizes",
    [(8,), (64,), (200,), (1_000,), (10_000,), (100_000,), (8, 100_000), (50, 500, 5_000, 50_000)],
    ids=lambda sizes: "+".join(map(str, sizes)),
)
async def test_the_heap_stays_within_a_quarter_of_max_bytes(sizes: tuple[int, ...]) -> None:
    store = MemoryStore(max_bytes=MAX_BYTES)
    chooser = random.Random(11)
    count = 3 * MAX_BYTES // (min(sizes) + 400)  # three times what fits: the store evicts
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for index in range(count):
            await store.write(entry_key(index), bytes(chooser.choice(sizes)), 60)
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert store.size_bytes <= MAX_BYTES
    assert len(store) < count  # it did evict
    assert 0.8 * MAX_BYTES <= grown <= 1.25 * MAX_BYTES, f"heap {grown / MAX_BYTES:.2f}x max_bytes"
