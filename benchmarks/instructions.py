"""`python -m benchmarks.instructions [--out FILE]`: instructions per request, by callgrind.

`make profile` runs it. Time on a shared VM moves with the host (the bench reports the steal);
the number of instructions a request executes does not: `valgrind --tool=callgrind` counts the
same total for the same binary and inputs whatever else the machine does. Each in-process app
that needs no Redis (the bare app, the middleware on a route without a policy, the body
replay, every flag off, the least a bypass can do, a MemoryStore hit) serves `SHORT` and then
`LONG` requests after a warm-up, each in its own process under callgrind; the difference of the
two totals over `LONG - SHORT` requests is one request's instructions, start-up cancelled out.

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
from benchmarks.harness import REPO, relative_paths
from benchmarks.l1 import checked_drivers
from benchmarks.report import LABELS
from benchmarks.tables import table

RESULTS = REPO / "benchmarks" / "results"
SHORT, LONG, WARMUP = 1_000, 3_000, 200
APPS = ("bare", "no_policy", "body_read", "flags_off", "least_bypass", "hit_memory")
TARGETS = {"no_policy": 1.03, "flags_off": 1.10, "least_bypass": 1.10, "hit_memory": 1.5}
"""Issue 15's limit against bare, where the row has one (the least bypass is held to the
flags-off row's limit: it is that row's floor)."""
NO_REDIS = "redis://127.0.0.1:1/0"
"""None of `APPS` connects to Redis; a port nothing listens on makes sure of it."""
_COLLECTED = re.compile(rb"Collected : (\d+)")


async def serve(name: str, count: int) -> None:
    """Serve `count` requests of app `name` after a warm-up, checked before and after."""
    built = apps.APPS[name](NO_REDIS, "cginstructions")
    try:
        driver = (await checked_drivers({name: built}))[name]
        for _ in range(WARMUP + count):
            await driver()
        driver.check(name)
    finally:
        await built.aclose()


def instructions(name: str, count: int) -> int:
    """callgrind's total for a process that serves `count` requests of app `name`."""
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "benchmarks.instructions",
        "--serve",
        name,
        str(count),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}  # the same dict layouts in every process
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, check=False)
    found = _COLLECTED.search(result.stderr)
    if result.returncode != 0 or found is None:
        raise RuntimeError(f"{name}: callgrind failed: {result.stderr.decode()[-500:]}")
    return int(found.group(1))


def per_request(name: str) -> float:
    return (instructions(name, LONG) - instructions(name, SHORT)) / (LONG - SHORT)


def report() -> str:
    counts = {}
    for name in APPS:
        counts[name] = per_request(name)
        print(f"[instructions] {name}: {counts[name]:,.0f}", file=sys.stderr, flush=True)
    bare = counts["bare"]
    rows = []
    for name in APPS:
        ratio = counts[name] / bare
        limit = TARGETS.get(name)
        verdict = "" if limit is None else f"≤ {limit:g}x: {'within' if ratio <= limit else 'over'}"
        rows.append([LABELS[name], f"{counts[name]:,.0f}", f"{ratio:.3f}x", verdict])
    python = sys.version.split()[0]
    return (
        "# Instructions per request (callgrind)\n\n"
        f"`make profile`: each app in its own CPython {python} process under `valgrind "
        f"--tool=callgrind`, {SHORT:,} and {LONG:,} requests after a warm-up of {WARMUP}, one "
        "request at a time through the raw ASGI driver; a request's instructions are the "
        f"difference of the two totals over {LONG - SHORT:,} requests. Repeatable to about "
        "0.5% on the same machine and binary, whatever the load. Not time: see "
        "`benchmarks/instructions.py`.\n\n"
        + "\n".join(table(["variant", "instructions", "ratio vs bare", "target"], rows))
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions", description=__doc__)
    parser.add_argument("--out", type=Path, default=RESULTS / "instructions.md")
    parser.add_argument("--serve", nargs=2, metavar=("APP", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        name, count = args.serve
        asyncio.run(serve(name, int(count)))
        return 0
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (`make bench-deps` installs it)")
    args.out.write_text(report(), encoding="utf-8")
    print(f"[instructions] wrote {relative_paths(str(args.out))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
