"""`python -m benchmarks.profile_redis [--out FILE]`: the call tree of `RedisStore.lookup`.

A loop of lookups (one entry and two generations, with metrics, as the gate calls it) on a
private redis-server, profiled with pyinstrument (pinned in `benchmarks/requirements.txt`),
headed by the medians of a raw GET, a raw MGET of the same three keys and the lookup, timed
interleaved on the same server. The committed trees are under
`benchmarks/results/profile-redis-lookup*.txt`.
"""

from __future__ import annotations

import asyncio
import os

from benchmarks.harness import RedisServer, call_tree, profile_main, time_async

ENTRY = b"x" * 400


async def profile(redis_url: str, calls: int) -> str:
    """The call tree of `calls` lookups, headed by the medians of the raw calls and the lookup."""
    import redis.asyncio
    from pyinstrument import Profiler

    from cachegate.metrics import default_metrics
    from cachegate.store import RedisStore

    client = redis.asyncio.Redis.from_url(redis_url)
    entry, generations = "p:{t}:entry", ("p:{t}:g1", "p:{t}:g2")
    keys = [entry, *generations]
    await client.set(entry, ENTRY, ex=3600)
    for key in generations:
        await client.set(key, b"1234567890123456789", ex=3600)
    store = RedisStore.from_url(redis_url, deadline=1.0, metrics=default_metrics())
    await store.start()

    async def get() -> None:
        await client.get(entry)

    async def mget() -> None:
        await client.mget(keys)

    async def lookup() -> None:
        await store.lookup(entry, generations)

    try:
        samples = await time_async(
            {"raw GET": get, "raw MGET(3)": mget, "RedisStore.lookup": lookup},
            warmup=500,
            iterations=10_000,
            rounds=10,
        )
        medians = {name: s.median / 1000 for name, s in samples.items()}
        floor = medians["raw MGET(3)"]
        head = ", ".join(f"{name} {us:.1f} µs" for name, us in medians.items())
        print(head, f"(lookup {medians['RedisStore.lookup'] / floor:.2f}x MGET)")
        profiler = Profiler(interval=0.0002, async_mode="disabled")
        profiler.start()
        for _ in range(calls):
            await store.lookup(entry, generations)
        profiler.stop()
        text = call_tree(profiler, show=r".*/(redis|cachegate)/")
        return (
            f"# RedisStore.lookup: {calls} calls (entry + 2 generations, with metrics), "
            "private redis-server, pyinstrument\n"
            f"# medians, interleaved: {head}: lookup "
            f"{medians['RedisStore.lookup'] / floor:.2f}x the raw MGET; "
            f"load average {os.getloadavg()[0]:.2f}\n\n" + text
        )
    finally:
        await store.aclose()
        await client.aclose()


def main() -> None:
    def run(calls: int) -> str:
        with RedisServer(cpu=1) as server:
            return asyncio.run(profile(server.url, calls))

    profile_main(__doc__, 3_000, run)


if __name__ == "__main__":
    main()
