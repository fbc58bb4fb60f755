"""`python -m benchmarks.instructions [--out FILE]`: instructions per request, by callgrind.

`make profile` runs it. Time on a shared VM moves with the host (the bench reports the steal);
the number of instructions a request executes does not: `valgrind --tool=callgrind` counts the
same total for the same binary and inputs whatever else the machine does. Each in-process app
(the bare app, the middleware on a route without a policy, the body replay, every flag off, the
least a bypass can do, a MemoryStore hit; the one-GET floor and a Redis hit, on a private
redis-server, with hiredis and with redis-py's own reply parser; the FastAPI GET endpoint behind
CacheGate and behind fastapi-cache2) serves `SHORT` and then `LONG` requests after a warm-up,
each in its own process under callgrind; the difference of the two totals over `LONG - SHORT`
requests is one request's instructions, start-up cancelled out. Only the benchmark process is
counted: not redis-server, not the kernel, not an HTTP server (over uvicorn each request also
costs the server's own work, the same for every app: see the bench's CPU per request). The
Redis rows alone move with the load: while a request waits for Redis, the event loop of a busy
machine wakes more often for nothing (up to 5% more instructions seen while the suite ran beside
it), so take them on a quiet machine.

Instructions are not time (a cache miss or a syscall costs more than its instructions), so the
ratios here stand beside the bench's, not for them: they say how much more work a path does,
with no luck in it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks import apps
from benchmarks.harness import REPO, RedisServer, relative_paths
from benchmarks.l1 import checked_drivers, seed_floor
from benchmarks.report import LABELS
from benchmarks.tables import table
from benchmarks.targets import LIMITS

RESULTS = REPO / "benchmarks" / "results"
SHORT, LONG, WARMUP = 1_000, 3_000, 200
APPS = ("bare", "no_policy", "body_read", "flags_off", "least_bypass", "hit_memory")
BOUND = {**LIMITS, "least_bypass": LIMITS["flags_off"]}
"""Each app's limit against its baseline, where its row has one (the least bypass is held to
the flags-off row's limit: it is that row's floor)."""
REDIS_APPS = ("floor_post", "hit_redis")
"""Against the one-GET floor; counted with hiredis and again with redis-py's own parser."""
GET_APPS = ("floor_get", "fastapi_cachegate_get", "fastapi_cache2_get")
"""The HTTP-cache peer's endpoint, against the GET floor."""
NO_REDIS = "redis://127.0.0.1:1/0"
"""None of `APPS` connects to Redis; a port nothing listens on makes sure of it."""
NAMESPACE = "cginstructions"
_COLLECTED = re.compile(rb"Collected : (\d+)")


async def serve(name: str, count: int, redis_url: str) -> None:
    """Serve `count` requests of app `name` after a warm-up, checked before and after."""
    if name in REDIS_APPS:
        await seed_floor(redis_url, NAMESPACE)
    built = apps.APPS[name](redis_url, NAMESPACE)
    try:
        driver = (await checked_drivers({name: built}))[name]
        for _ in range(WARMUP + count):
            await driver()
        driver.check(name)
    finally:
        await built.aclose()


_WITHOUT_HIREDIS = (  # `import hiredis` fails, so redis-py picks its own parser
    "import runpy, sys; sys.modules['hiredis'] = None; "
    "runpy.run_module('benchmarks.instructions', run_name='__main__')"
)


def instructions(name: str, count: int, redis_url: str, parser: str = "hiredis") -> int:
    """callgrind's total for a process that serves `count` requests of app `name`; its replies
    parsed by hiredis (installed in the bench's environment), or with `parser="python"` by
    redis-py's own parser, hiredis hidden from the process as if it were not installed."""
    start = ["-m", "benchmarks.instructions"] if parser == "hiredis" else ["-c", _WITHOUT_HIREDIS]
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        *start,
        "--serve",
        name,
        str(count),
        redis_url,
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}  # the same dict layouts in every process
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, check=False)
    found = _COLLECTED.search(result.stderr)
    if result.returncode != 0 or found is None:
        raise RuntimeError(f"{name}: callgrind failed: {result.stderr.decode()[-500:]}")
    return int(found.group(1))


def per_request(name: str, redis_url: str = NO_REDIS, parser: str = "hiredis") -> float:
    long = instructions(name, LONG, redis_url, parser)
    short = instructions(name, SHORT, redis_url, parser)
    return (long - short) / (LONG - SHORT)


def _rows(counts: dict[str, float], base: str) -> list[list[str]]:
    rows = []
    for name, count in counts.items():
        ratio = count / counts[base]
        limit = BOUND.get(name)
        verdict = "" if limit is None else f"≤ {limit:g}x: {'within' if ratio <= limit else 'over'}"
        rows.append([LABELS[name], f"{count:,.0f}", f"{ratio:.3f}x", verdict])
    return rows


def report() -> str:
    counts: dict[str, float] = {}
    parsed: dict[str, float] = {}
    with RedisServer() as server:
        for name in (*APPS, *REDIS_APPS, *GET_APPS):
            counts[name] = per_request(name, NO_REDIS if name in APPS else server.url)
            print(f"[instructions] {name}: {counts[name]:,.0f}", file=sys.stderr, flush=True)
        for name in REDIS_APPS:
            parsed[name] = per_request(name, server.url, "python")
            print(f"[instructions] {name}, no hiredis: {parsed[name]:,.0f}", file=sys.stderr)
    local = _rows({name: counts[name] for name in APPS}, "bare")
    redis = _rows({name: counts[name] for name in REDIS_APPS}, "floor_post")
    python_parser = _rows(parsed, "floor_post")
    peer = _rows({name: counts[name] for name in GET_APPS}, "floor_get")
    cache2 = counts["fastapi_cache2_get"] / counts["fastapi_cachegate_get"]
    python = sys.version.split()[0]
    return (
        "# Instructions per request (callgrind)\n\n"
        f"`make profile`: each app in its own CPython {python} process under `valgrind "
        f"--tool=callgrind`, {SHORT:,} and {LONG:,} requests after a warm-up of {WARMUP}, one "
        "request at a time through the raw ASGI driver; a request's instructions are the "
        f"difference of the two totals over {LONG - SHORT:,} requests. The in-process rows "
        "repeat to about 0.5% on the same machine and binary, whatever the load; the Redis "
        "rows only on a quiet machine (a busy one's event loop wakes more often while it "
        "waits). Not time: see `benchmarks/instructions.py`.\n\n"
        + "\n".join(table(["variant", "instructions", "ratio vs bare", "target"], local))
        + "\n\nOn a private redis-server (its own work, and the kernel's, not counted), replies "
        "parsed by hiredis:\n\n"
        + "\n".join(table(["variant", "instructions", "ratio vs floor", "target"], redis))
        + "\n\nThe same without hiredis (redis-py's own parser, which reads each reply line "
        "in Python: a lookup's MGET of three keys has four):\n\n"
        + "\n".join(table(["variant", "instructions", "ratio vs floor", "target"], python_parser))
        + "\n\nThe HTTP-cache peer's FastAPI GET endpoint (the HTTP server's own work, the same "
        "for every app, not counted): fastapi-cache2's hit executes "
        f"{cache2:.2f}x CacheGate's.\n\n"
        + "\n".join(table(["variant", "instructions", "ratio vs GET floor", "target"], peer))
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions", description=__doc__)
    parser.add_argument("--out", type=Path, default=RESULTS / "instructions.md")
    parser.add_argument("--serve", nargs=3, metavar=("APP", "COUNT", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        name, count, redis_url = args.serve
        asyncio.run(serve(name, int(count), redis_url))
        return 0
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (`make bench-deps` installs it)")
    args.out.write_text(report(), encoding="utf-8")
    print(f"[instructions] wrote {relative_paths(str(args.out))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
