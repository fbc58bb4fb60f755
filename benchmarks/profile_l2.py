"""`python -m benchmarks.profile_l2 [--out FILE]`: the call tree of the L2 all-hit path.

96 cached 1024-d texts through `CachedEmbedder` on a private redis-server, profiled with
pyinstrument (pinned in `benchmarks/requirements.txt`); prints the median time of the floor
(MGET + decode to lists) and of CacheGate beside it, for quick iteration. `make profile`
(`benchmarks.profiles`) writes its tree to `benchmarks/results/profile-l2-all-hit.txt`.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from benchmarks.harness import RedisServer, call_tree, profile_main
from benchmarks.l2 import BATCH, CohereProcess, cachegate_system, floor_system, fresh_texts


async def _median_ms(embed: Any, texts: list[str], count: int) -> float:
    times = []
    for _ in range(count):
        started = time.perf_counter_ns()
        await embed(texts)
        times.append(time.perf_counter_ns() - started)
    return statistics.median(times) / 1e6


async def profile(redis_url: str, cohere_url: str, calls: int) -> str:
    """The call tree of `calls` all-hit calls, headed by the medians of floor and CacheGate."""
    import cohere
    from pyinstrument import Profiler

    client = cohere.AsyncClientV2(api_key="benchmark", base_url=cohere_url, timeout=60)
    floor = floor_system(redis_url, "cgprofile", client)
    cached = cachegate_system(redis_url, "cgprofile", client)
    hot = fresh_texts(BATCH, "hot")
    try:
        for system in (floor, cached):
            for _ in range(20):
                await system.embed(hot)
        for _ in range(3):
            floor_ms = await _median_ms(floor.embed, hot, 50)
            cached_ms = await _median_ms(cached.embed, hot, 50)
            ratio = cached_ms / floor_ms
            print(f"floor {floor_ms:.2f} ms, CacheGate {cached_ms:.2f} ms: {ratio:.2f}x")
        profiler = Profiler(interval=0.0002, async_mode="disabled")
        profiler.start()
        for _ in range(calls):
            await cached.embed(hot)
        profiler.stop()
        return (
            f"# L2 all-hit: {calls} calls of {BATCH} cached 1024-d texts, "
            "CachedEmbedder over RedisStore (pyinstrument)\n"
            f"# floor {floor_ms:.2f} ms, CacheGate {cached_ms:.2f} ms median per call: "
            f"{cached_ms / floor_ms:.2f}x\n\n" + call_tree(profiler)
        )
    finally:
        await floor.close()
        await cached.close()


def main() -> None:
    def run(calls: int) -> str:
        with RedisServer(cpu=1) as server, CohereProcess() as cohere_server:
            return asyncio.run(profile(server.url, cohere_server.url, calls))

    profile_main(__doc__, 300, run)


if __name__ == "__main__":
    main()
