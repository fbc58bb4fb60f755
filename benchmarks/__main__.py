"""`python -m benchmarks [--quick] [--only GROUP ...]`: run the benchmarks, write the report.

Run from the repository root with the benchmark environment (`make bench` does both). The full
run writes `benchmarks/results/latest.md` and a dated copy; `--quick` (a smoke run, minutes
less, numbers not for citing) writes `benchmarks/results/quick.md` only.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.harness import REPO, RedisServer, cpu_ticks, delete_prefix, machine, percentile

GROUPS = (
    "inprocess",
    "uvicorn",
    "l2",
    "flags",
    "invalidation",
    "encryption",
    "streaming",
    "killswitch",
    "freshness",
)
RESULTS = REPO / "benchmarks" / "results"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return _jsonable(asdict(value))
    if isinstance(value, dict):
        return {
            (
                k
                if isinstance(k, str)
                else "|".join(map(str, k))
                if isinstance(k, tuple)
                else str(k)
            ): _jsonable(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer iterations")
    parser.add_argument("--only", nargs="+", choices=GROUPS, help="run only these groups")
    parser.add_argument(
        "--out", type=Path, default=None, help="report path (default: benchmarks/results/...)"
    )
    args = parser.parse_args(argv)
    groups = set(args.only or GROUPS)
    quick: bool = args.quick
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {0})  # the benchmark process on CPU 0, Redis/wrk on CPU 1
    namespace = f"cgbench{os.getpid()}"
    started = time.monotonic()
    load_start = os.getloadavg()[0]
    ticks_start = cpu_ticks()
    measured = report.Measured()
    notes: list[str] = []
    with RedisServer(cpu=1) as server:
        url = server.url
        info = machine(url)
        try:
            if "inprocess" in groups:
                from benchmarks import l1

                log("L1 in-process ...")
                measured.inprocess = asyncio.run(l1.in_process(url, namespace, quick=quick))
            if "uvicorn" in groups:
                from benchmarks import l1

                log("L1 over uvicorn with wrk ...")
                measured.uvicorn = l1.over_uvicorn(url, namespace, quick=quick)
            if "l2" in groups:
                log("L2 embedding caches ...")
                try:
                    from benchmarks import l2

                    measured.l2 = l2.main_sync(url, namespace, quick=quick)
                except ImportError as error:
                    notes.append(f"L2 not run: {error}")
            if "flags" in groups:
                from benchmarks import flag_cost

                log("flag evaluation ...")
                measured.flags = flag_cost.run(quick=quick)
            if "invalidation" in groups:
                from benchmarks import invalidation

                log("invalidation at growing entry counts ...")
                measured.invalidation = invalidation.main_sync(url, namespace, quick=quick)
            if "killswitch" in groups:
                log("kill switch time to effect (real Unleash) ...")
                measured.kill_switch, note = _kill_switch(quick)
                if note:
                    notes.append(note)
            if "encryption" in groups:
                from benchmarks import encryption

                log("encryption at rest ...")
                measured.encryption = encryption.run(url, namespace, quick=quick)
            if "streaming" in groups:
                from benchmarks import streaming

                log("streamed answers ...")
                measured.streaming = streaming.run(url, namespace, quick=quick)
            if "freshness" in groups:
                from benchmarks import freshness

                log("freshness under faults (hit-path checks, cluster master killed) ...")
                measured.freshness = freshness.run(url, namespace, quick=quick)
        finally:
            delete_prefix(url, namespace)
    elapsed = time.monotonic() - started
    load_end = os.getloadavg()[0]
    ticks_end = cpu_ticks()
    now = dt.datetime.now(dt.UTC)
    settings = [
        f"`make bench` ({'--quick smoke run, not for citing' if quick else 'full run'}),",
        f"{now:%Y-%m-%d %H:%M} UTC, {elapsed / 60:.1f} min.",
        "Timings with `time.perf_counter_ns` after a warm-up; medians and p95 of many",
        "iterations, variants interleaved in rounds; ratios are against each group's baseline.",
        "The benchmark process runs on CPU 0; a private `redis-server` (no persistence) and",
        "the load generator on CPU 1. No timed assertions: these are measurements.",
        f"Load average (1 min) {load_start:.2f} at the start and {load_end:.2f} at the end",
        "(anything above ~0.1 is other work sharing the 2 cores).",
    ]
    if ticks_start is not None and ticks_end is not None and ticks_end[1] > ticks_start[1]:
        stolen = (ticks_end[0] - ticks_start[0]) / (ticks_end[1] - ticks_start[1])
        settings.append(
            f"The VM's host took {stolen:.1%} of its CPU time during the run (steal time, "
            "/proc/stat); it lands on whichever side was running and widens the rounds' spread."
        )
    title = "CacheGate benchmarks" + (" (quick smoke run)" if quick else "")
    text = report.render(
        title=title, machine=info, settings=settings, measured=measured, notes=notes
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.out is not None:
        paths = [args.out]
    elif quick:
        paths = [RESULTS / "quick.md"]
    else:
        paths = [RESULTS / "latest.md", RESULTS / f"{now:%Y-%m-%d}.md"]
    for path in paths:
        path.write_text(text + "\n", encoding="utf-8")
        log(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    if not quick and args.out is None:
        groups_raw = {name: _jsonable(value) for name, value in vars(measured).items()}
        _drop_values(groups_raw)
        raw = {
            "machine": info,
            "quick": quick,
            "targets": _jsonable(report.target_rows(measured)),
            **groups_raw,
        }
        (RESULTS / "latest.json").write_text(json.dumps(raw, indent=1) + "\n", encoding="utf-8")
    print(text)
    return 0


def _kill_switch(quick: bool) -> tuple[dict[str, Any] | None, str]:
    """`benchmarks.kill_switch` in the project's `.venv` (it starts the suite's Unleash server)."""
    import subprocess

    python = REPO / ".venv" / "bin" / "python"
    if not python.exists():
        return None, "kill switch not measured: no .venv (run `make install`)"
    command = [str(python), "-m", "benchmarks.kill_switch", *(["--quick"] if quick else [])]
    result = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=600, check=False
    )
    if result.returncode != 0:
        return None, f"kill switch not measured: {result.stderr.strip()[-300:]}"
    measured: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return measured, ""


def _drop_values(tree: Any) -> None:
    """Replace raw sample lists by their summary, so the JSON stays small."""
    if isinstance(tree, dict):
        if "values" in tree and isinstance(tree["values"], list):
            values = tree.pop("values")
            tree["count"] = len(values)
            tree["median_ns"] = percentile(values, 0.5)
            tree["p95_ns"] = percentile(values, 0.95)
        for value in tree.values():
            _drop_values(value)
    elif isinstance(tree, list):
        for value in tree:
            _drop_values(value)


if __name__ == "__main__":
    raise SystemExit(main())
