"""Invalidation at 1 k, 100 k and 1 M cached entries: `gate.invalidate(tenant)` vs SCAN+DEL.

The tenant's N entries are created under CacheGate's real key layout
(`{namespace}:{t:<tag>}:r:<n>`) with `DEBUG POPULATE` on the private server (pipelined SETs
when DEBUG is refused). Then, with the N entries present, `gate.invalidate(tenant)` is timed
many times (one round trip: SET NX + INCR + EXPIRE pipelined), interleaved with one raw INCR
(the floor of any one-round-trip invalidation), and SCAN+DEL of the tenant's
entry prefix (SCAN COUNT 1000, DEL per 1000 keys: what a cache without generations must do) is
timed on fresh copies of the same N entries. The keyspace holds only those entries, which is
the most favourable case for SCAN.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from benchmarks.harness import RoundTrips, Samples, delete_prefix, time_async

TENANT = "ws-invalidate"
VALUE_BYTES = 1200


@dataclass
class InvalidationResult:
    sizes: list[int] = field(default_factory=list)
    invalidate: dict[int, Samples] = field(default_factory=dict)
    incr: dict[int, Samples] = field(default_factory=dict)
    """The floor: one raw INCR round trip, timed interleaved with `invalidate`."""
    scan_del: dict[int, Samples] = field(default_factory=dict)
    scan_del_round_trips: dict[int, int] = field(default_factory=dict)
    invalidate_round_trips: int = 0
    populate: str = ""


async def _populate(client: Any, prefix: str, count: int) -> str:
    import redis

    try:
        await client.execute_command("DEBUG", "POPULATE", count, prefix, VALUE_BYTES)
        return "DEBUG POPULATE"
    except redis.ResponseError:
        value = b"x" * VALUE_BYTES
        for start in range(0, count, 10_000):
            pipe = client.pipeline(transaction=False)
            for i in range(start, min(start + 10_000, count)):
                pipe.set(f"{prefix}:{i}", value)
            await pipe.execute()
        return "pipelined SET"


async def _scan_del(client: Any, match: str) -> int:
    deleted = 0
    batch: list[bytes] = []
    async for key in client.scan_iter(match=match, count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            deleted += await client.delete(*batch)
            batch = []
    if batch:
        deleted += await client.delete(*batch)
    return deleted


async def run(redis_url: str, namespace: str, *, quick: bool) -> InvalidationResult:
    import redis.asyncio

    from cachegate import CacheGate, Policy, RedisStore, trusted_header
    from cachegate.keys import KeySpace

    sizes = [1_000, 10_000, 100_000] if quick else [1_000, 100_000, 1_000_000]
    result = InvalidationResult(sizes=sizes)
    keyspace = KeySpace(namespace)
    tag_prefix = f"{namespace}:{{t:{keyspace.tenant_tag(TENANT)}}}:r"
    client = redis.asyncio.Redis.from_url(redis_url, socket_timeout=300)
    store = RedisStore.from_url(redis_url, deadline=1.0)
    gate = CacheGate(
        policies=[Policy("/ai/query", tenant=trusted_header("X-Workspace-ID"))],
        store=store,
        namespace=namespace,
    )
    clock = time.perf_counter_ns
    counter = f"{namespace}:incr-floor"

    async def invalidate() -> None:
        if not await gate.invalidate(TENANT):
            raise RuntimeError("an invalidation was not acknowledged")

    async def incr() -> None:
        await client.incr(counter)

    try:
        for size in sizes:
            result.populate = await _populate(client, tag_prefix, size)
            if await client.dbsize() < size:
                raise RuntimeError(f"populating {size} entries failed")
            timed = await time_async(
                {"invalidate": invalidate, "INCR": incr},
                warmup=100,
                iterations=300 if quick else 3_000,
                rounds=3 if quick else 10,
            )
            result.invalidate[size] = timed["invalidate"]
            result.incr[size] = timed["INCR"]
            if not result.invalidate_round_trips:
                with RoundTrips().counting() as trips:
                    await gate.invalidate(TENANT)
                result.invalidate_round_trips = trips.count
            repeats = 1 if size >= 1_000_000 or quick else (3 if size >= 100_000 else 20)
            scans = Samples(f"scan+del {size}")
            for repeat in range(repeats):
                if repeat:
                    await _populate(client, tag_prefix, size)
                with RoundTrips().counting() as trips:
                    start = clock()
                    deleted = await _scan_del(client, tag_prefix + ":*")
                    scans.values.append(clock() - start)
                if deleted != size:
                    raise RuntimeError(f"SCAN+DEL deleted {deleted} of {size}")
                result.scan_del_round_trips[size] = trips.count
            result.scan_del[size] = scans
    finally:
        await gate.aclose()
        await client.aclose()
        delete_prefix(redis_url, namespace)
    return result


def main_sync(redis_url: str, namespace: str, *, quick: bool) -> InvalidationResult:
    return asyncio.run(run(redis_url, namespace, quick=quick))
