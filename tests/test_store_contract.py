"""The store contract, run against both stores (`store` fixture: MemoryStore and the real Redis).
Plus what only `MemoryStore` promises: a byte bound, LRU eviction, TTLs on an injected clock."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio
import pytest

from cachegate.keys import CacheScope, KeySpace
from cachegate.store import Lookup, MemoryStore, Store
from cachegate.store.base import MISSING_GENERATION
from cachegate.store.memory import ITEM_OVERHEAD

CHARGE = 3 + 100 + ITEM_OVERHEAD
"""What `_item` is charged: key, value and the per-item overhead."""

pytestmark = pytest.mark.anyio


def entry_and_generations(namespace: str, tenant: str = "t1", subject: str | None = "c1"):
    space = KeySpace(namespace)
    scope = CacheScope(tenant, subject)
    key = space.entry_key(scope, route="/q", method="POST", material={"q": tenant})
    return key, space.generation_keys(scope)


async def test_both_stores_implement_the_protocol(store: Store) -> None:
    assert isinstance(store, Store)


async def test_lookup_returns_the_entry_and_generations_in_one_call(
    store: Store, namespace: str
) -> None:
    key, gens = entry_and_generations(namespace)
    created = await store.generations(gens)
    await store.write(key, b"\x00entry\xff", 30)
    found = await store.lookup(key, gens)
    assert (found.value, found.generations) == (b"\x00entry\xff", created)
    assert found == Lookup(b"\x00entry\xff", created, found.epoch)
    assert (await store.lookup(key, gens)).epoch == found.epoch  # same server, same epoch


async def test_missing_generations_and_entries_read_as_zero_and_none(
    store: Store, namespace: str
) -> None:
    key, gens = entry_and_generations(namespace)
    found = await store.lookup(key, gens)
    assert (found.value, found.generations) == (None, (MISSING_GENERATION,) * 2)
    await store.write(key, b"v", 30)
    assert (await store.lookup(key, gens)).generations == (0, 0)
    assert (await store.lookup(key, ())).value == b"v"


async def test_generations_start_random_nonzero_and_stay_put(store: Store, namespace: str) -> None:
    _, gens = entry_and_generations(namespace)
    _, other = entry_and_generations(namespace, tenant="t2", subject="c9")
    first = await store.generations(gens)
    assert len(first) == 2
    assert all(g != MISSING_GENERATION and g > 0 for g in first)
    assert await store.generations(gens) == first  # stable: never re-created
    assert (await store.lookup(gens[0] + ":unused", gens)).generations == first
    starts = set(first) | set(await store.generations(other))
    assert len(starts) == 4  # random starts (two equal would be a 1 in 2**60 event)
    assert all(g < 2**62 for g in starts)


async def test_bump_advances_each_generation(store: Store, namespace: str) -> None:
    key, gens = entry_and_generations(namespace)
    before = await store.generations(gens)
    await store.bump(gens)
    after = (await store.lookup(key, gens)).generations
    assert all(a > b for a, b in zip(after, before, strict=True))
    await store.bump(gens[1:])
    again = (await store.lookup(key, gens)).generations
    assert again[0] == after[0]
    assert again[1] > after[1]
    assert await store.generations(gens) == again


async def test_bump_of_a_missing_generation_creates_a_random_one(
    store: Store, namespace: str
) -> None:
    _, gens = entry_and_generations(namespace)
    await store.bump(gens)
    bumped = (await store.lookup(gens[0] + ":unused", gens)).generations
    assert all(g > 1 for g in bumped)  # a random start, advanced; never 0 or 1
    assert bumped[0] != bumped[1]
    assert await store.generations(gens) == bumped


async def _expires_on_time(
    write: Callable[[], Awaitable[None]], present: Callable[[], Awaitable[bool]], ttl: float
) -> None:
    """Write, then read every 20 ms: gone no earlier than `ttl` after the write started, and
    gone within a second after it (reads that extended the TTL would keep it alive)."""
    started = time.monotonic()
    await write()
    written = time.monotonic()
    seen = False
    while await present():
        seen = True
        assert time.monotonic() - written < ttl + 1.0, "outlived its TTL: do reads extend it?"
        await anyio.sleep(0.02)
    gone = time.monotonic()
    assert gone - started >= ttl - 0.01, "expired before its TTL"
    if gone - written < ttl - 0.1:  # unless this machine stalled, it was read before expiry
        assert seen


async def test_ttl_is_absolute_and_reads_never_extend_it(store: Store, namespace: str) -> None:
    key, gens = entry_and_generations(namespace)
    other_key, _ = entry_and_generations(namespace, tenant="t2")
    await store.write(other_key, b"w", 30)

    async def present() -> bool:
        found = await store.lookup(key, gens)
        values = await store.get_many([key])  # read after: it may just have expired
        if found.value is None:
            assert values == [None]
        return values[0] is not None

    await _expires_on_time(lambda: store.write(key, b"v", 0.4), present, 0.4)
    assert await store.get_many([other_key]) == [b"w"]


async def test_set_many_writes_all_with_one_absolute_ttl(store: Store, namespace: str) -> None:
    items = [(f"{namespace}:{{t:x}}:v:{i}", bytes([i]) * (i + 1)) for i in range(4)]
    await store.set_many([], 0.4)
    values: list[list[bytes | None]] = []

    async def any_left() -> bool:
        values.append(await store.get_many([k for k, _ in items]))
        return any(v is not None for v in values[-1])

    await _expires_on_time(lambda: store.set_many(items, 0.4), any_left, 0.4)
    assert values[0] in ([v for _, v in items], [None] * 4)  # all or nothing: one TTL


async def test_get_many_keeps_order_and_reports_missing_as_none(
    store: Store, namespace: str
) -> None:
    keys = [f"{namespace}:{{t:x}}:e:{i}" for i in range(5)]
    await store.write(keys[1], b"one", 30)
    await store.write(keys[3], b"three", 30)
    assert await store.get_many(keys) == [None, b"one", None, b"three", None]
    assert await store.get_many(list(reversed(keys))) == [None, b"three", None, b"one", None]
    assert await store.get_many([]) == []


async def test_write_overwrites_and_delete_removes(store: Store, namespace: str) -> None:
    key, gens = entry_and_generations(namespace)
    await store.write(key, b"first", 30)
    await store.write(key, b"second", 30)
    assert (await store.lookup(key, gens)).value == b"second"
    await store.delete(key)
    assert (await store.lookup(key, gens)).value is None
    await store.delete(key)  # deleting a missing key is fine


async def test_binary_values_survive(store: Store, namespace: str) -> None:
    key, gens = entry_and_generations(namespace)
    value = bytes(range(256)) * 3
    await store.write(key, value, 30)
    assert (await store.lookup(key, gens)).value == value


# ---- MemoryStore only ----------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _item(index: int) -> tuple[str, bytes]:
    return f"k{index:02d}", b"x" * 100  # charged CHARGE bytes


async def test_memory_store_is_bounded_in_bytes() -> None:
    store = MemoryStore(max_bytes=1000)
    for index in range(50):
        await store.write(*_item(index), ttl=30)
        assert store.size_bytes <= 1000
    assert len(store) == 1000 // CHARGE
    assert await store.get_many(["k49", "k00"]) == [b"x" * 100, None]


async def test_memory_store_evicts_the_least_recently_used() -> None:
    store = MemoryStore(max_bytes=3 * CHARGE)
    for index in range(3):
        await store.write(*_item(index), ttl=30)
    await store.lookup("k00", ())  # k00 is now the most recently used
    await store.write(*_item(3), ttl=30)
    assert (
        await store.get_many(["k00", "k01", "k02", "k03"]) == [b"x" * 100, None] + [b"x" * 100] * 2
    )
    await store.get_many(["k02"])
    await store.write(*_item(4), ttl=30)
    assert await store.get_many(["k00", "k02", "k03", "k04"]) == [None] + [b"x" * 100] * 3


async def test_memory_store_skips_an_item_larger_than_the_bound() -> None:
    store = MemoryStore(max_bytes=500)
    await store.write("small", b"s", 30)
    await store.write("huge", b"h" * 1000, 30)
    assert await store.get_many(["small", "huge"]) == [b"s", None]
    before = store.size_bytes
    await store.write("small", b"s", 30)
    assert store.size_bytes == before  # overwriting does not double-charge


async def test_memory_store_ttl_on_an_injected_clock() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    await store.write("k", b"v", 10)
    for step in range(9):
        clock.now += 1.0 if step else 0.5
        assert (await store.lookup("k", ())).value == b"v"  # reads at 0.5 … 8.5 s
        assert await store.get_many(["k"]) == [b"v"]
    clock.now = 1000.0 + 9.999
    assert await store.get_many(["k"]) == [b"v"]
    clock.now = 1000.0 + 10.0
    assert await store.get_many(["k"]) == [None]
    assert len(store) == 0 and store.size_bytes == 0


async def test_memory_store_generations_expire_and_restart_elsewhere() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock, generation_ttl=100)
    first = await store.generations(["g"])
    clock.now += 99
    assert (await store.lookup("e", ["g"])).generations == first
    clock.now += 1
    assert (await store.lookup("e", ["g"])).generations == (MISSING_GENERATION,)
    assert await store.generations(["g"]) != first


async def test_memory_store_generation_evicted_reads_as_missing() -> None:
    store = MemoryStore(max_bytes=2 * CHARGE)
    gens = await store.generations(["g"])
    assert gens[0] > 0
    for index in range(3):
        await store.write(*_item(index), ttl=30)
    assert (await store.lookup("k02", ["g"])).generations == (MISSING_GENERATION,)


def test_memory_store_rejects_a_non_positive_bound() -> None:
    with pytest.raises(ValueError):
        MemoryStore(max_bytes=0)
