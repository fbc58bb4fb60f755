"""`python -m benchmarks.profiles [--only PATH ...] [--seconds S]`: call trees of the hot paths.

`make profile` runs it. The four paths of issue 15, each under pyinstrument (pinned in
`benchmarks/requirements.txt`) on a private redis-server, written as text to
`benchmarks/results/profile-<path>.txt` with no machine paths:

- `redis-hit`: a CacheGate hit on `RedisStore`, in-process (the L1 group's app and raw ASGI
  driver), headed by its median beside the one-GET floor's;
- `memory-hit`: the same hit on `MemoryStore`, beside the bare app;
- `flags-off`: every layer off on a cached route (a bypass), beside the bare app;
- `l2-all-hit`: 96 cached 1024-d texts through `CachedEmbedder` (`benchmarks.profile_l2`),
  beside the MGET-and-decode floor.

The medians in the headings are measured without the profiler, just before it runs; under the
profiler a request takes longer (see `INTERVAL`), so read the trees' shares, not their times.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

from benchmarks import apps
from benchmarks.harness import REPO, RedisServer, call_tree, relative_paths, time_async
from benchmarks.l1 import checked_drivers, seed_floor
from benchmarks.l2 import CohereProcess
from benchmarks.tables import us

RESULTS = REPO / "benchmarks" / "results"
INTERVAL = 0.001
"""pyinstrument's sampling interval. Its hook runs on every Python call, so a profiled request
takes about three times as long at any interval from 1 to 10 ms (tenfold at 100 µs), and code
that makes many small calls weighs more in the tree than it costs unprofiled."""
IN_PROCESS = {
    # path: (what it is, the app profiled, the app it is compared with)
    "redis-hit": ("CacheGate hit, RedisStore", "hit_redis", "floor_post"),
    "memory-hit": ("CacheGate hit, MemoryStore", "hit_memory", "bare"),
    "flags-off": ("every layer off on a cached route (bypass)", "flags_off", "bare"),
}
PATHS = (*IN_PROCESS, "l2-all-hit")
SHOW = r".*[/\\](redis|starlette)[/\\].*"
"""Library frames kept in the trees: the Redis client and the framework the apps run on."""


async def profile_request(redis_url: str, namespace: str, path: str, seconds: float) -> str:
    """One in-process path's call tree, headed by its median and its baseline's."""
    from pyinstrument import Profiler

    what, name, base = IN_PROCESS[path]
    await seed_floor(redis_url, namespace)
    built = {variant: apps.APPS[variant](redis_url, namespace) for variant in (name, base)}
    try:
        drivers = await checked_drivers(built)
        timed = await time_async(dict(drivers.items()), warmup=500, iterations=4_000, rounds=4)
        driver = drivers[name]
        profiler = Profiler(interval=INTERVAL, async_mode="disabled")
        requests = 0
        ends = time.monotonic() + seconds
        profiler.start()
        while time.monotonic() < ends:
            for _ in range(100):
                await driver()
            requests += 100
        profiler.stop()
        driver.check(name)
    finally:
        for item in built.values():
            await item.aclose()
    ours, theirs = timed[name].median, timed[base].median
    return (
        f"# {what}: {requests:,} requests in-process (raw ASGI driver), pyinstrument every "
        f"{INTERVAL * 1e6:.0f} µs\n"
        f"# median without the profiler: {us(ours)}; {base} {us(theirs)}: "
        f"{ours / theirs:.2f}x\n\n" + call_tree(profiler, show=SHOW)
    )


def main(argv: list[str] | None = None) -> int:
    from benchmarks import profile_l2

    parser = argparse.ArgumentParser(prog="python -m benchmarks.profiles", description=__doc__)
    parser.add_argument("--only", nargs="+", choices=PATHS, help="profile only these paths")
    parser.add_argument("--seconds", type=float, default=5.0, help="profiled time per path")
    parser.add_argument("--calls", type=int, default=300, help="L2 batches profiled")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the trees")
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {0})  # as in `make bench`: this process on CPU 0, Redis on 1
    namespace = f"cgprofile{os.getpid()}"
    args.out.mkdir(parents=True, exist_ok=True)
    with RedisServer(cpu=1) as server:
        for path in args.only or PATHS:
            print(f"[profile] {path} ...", flush=True)
            if path == "l2-all-hit":
                with CohereProcess() as cohere_server:
                    text = asyncio.run(
                        profile_l2.profile(server.url, cohere_server.url, args.calls)
                    )
            else:
                text = asyncio.run(profile_request(server.url, namespace, path, args.seconds))
            target = args.out / f"profile-{path}.txt"
            load = f"# load average (1 min) {os.getloadavg()[0]:.2f} at the end of the run\n"
            target.write_text(load + text, encoding="utf-8")
            print(f"[profile] wrote {relative_paths(str(target))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
