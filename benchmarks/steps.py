"""`python -m benchmarks.steps [--out FILE]`: the flags-off bypass taken apart, step by step.

`make profile` runs it beside the call trees. Every layer off on a cached route is measured
against the bare app (`flags_off` and `bare`, one request at a time, rounds interleaved); then
each step the middleware takes for such a request is timed alone, warm, on the same objects
the `flags_off` app uses. What the steps do not add up to is the cost of the calls and awaits
that join them (two coroutine frames, the header wrapper's frame per message). The table says
which of the overhead is work a bypass must do at all (find the route, read the tenant, decide,
count, carry the decision, mark the response) and how far from the bare app that alone is; and
`least_bypass`, those steps inlined in one middleware, shows what they cost with nothing between.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import apps
from benchmarks.harness import (
    REPO,
    RedisServer,
    Samples,
    relative_paths,
    time_async,
    time_sync,
)
from benchmarks.l1 import Driver, time_apps
from benchmarks.tables import table, us
from cachegate.extractors import RequestView
from cachegate.middleware import STATE_KEY, CacheResponder
from cachegate.responses import add_header
from cachegate.rollout import enter_decision, exit_decision
from cachegate.vocabulary import BypassReason, CachePath, Served

RESULTS = REPO / "benchmarks" / "results"


def _steps(built: apps.Built) -> dict[str, Callable[[], Any]]:
    """Each step of a flags-off request, as a call on the `flags_off` app's own objects."""
    gate = built.gate
    assert gate is not None
    scope = dict(Driver(built.app, get=False).scope)
    match = gate.router.match(scope["method"], scope["path"])
    assert match is not None
    policy = match.rule
    counts = gate.counts(policy.route)
    request = RequestView.of(scope, match.path_params, b"")
    tenant = gate.keying.tenant(policy, request)  # type: ignore[arg-type]
    assert tenant is not None
    decision = gate.rollout.decide(tenant)

    def count() -> None:
        counts.decided(decision.l1, decision.l2)
        counts.bypass(BypassReason.MODE_OFF)
        counts.finished(CachePath.BYPASS, time.perf_counter() - 1.0)

    def carry_decision() -> None:
        scope.setdefault("state", {})[STATE_KEY] = decision
        exit_decision(enter_decision(decision, tenant))

    return {
        "find the route (`Router.match`)": lambda: gate.router.match("POST", apps.ROUTE),
        "the request's responder (`CacheResponder`)": lambda: CacheResponder(
            built.app,
            gate,
            policy,  # type: ignore[arg-type]
            match,
        ),
        "the extractors' view (`RequestView.of`)": lambda: RequestView.of(
            scope, match.path_params, b""
        ),
        "read the tenant (`trusted_header`)": lambda: gate.keying.tenant(policy, request),  # type: ignore[arg-type]
        "decide (`StaticRollout`)": lambda: gate.rollout.decide(tenant),
        "count (decision, bypass, duration)": count,
        "carry the decision (`request.state`, contextvar)": carry_decision,
    }


BATCH = 100


async def _marking() -> float:
    """What `X-CacheGate` costs a response of two messages: the wrapped sends less the plain
    ones (each sample a batch of `BATCH` responses, in the running loop, as a request does)."""
    start = {"type": "http.response.start", "status": 200, "headers": [(b"a", b"b")]}
    body = {"type": "http.response.body", "body": b"{}"}

    async def sent(message: Any) -> None:
        return None

    async def plain() -> None:
        for _ in range(BATCH):
            await sent(dict(start))
            await sent(body)

    async def marked() -> None:
        for _ in range(BATCH):
            send = add_header(sent, Served.BYPASS.header)
            await send(dict(start))
            await send(body)

    timed = await time_async(
        {"plain": plain, "marked": marked}, warmup=200, iterations=2_000, rounds=10
    )
    return (timed["marked"].median - timed["plain"].median) / BATCH


async def _overhead(redis_url: str, namespace: str) -> tuple[float, float, float]:
    names = ("bare", "flags_off", "least_bypass")
    timed = await time_apps(
        lambda: {name: apps.APPS[name](redis_url, namespace) for name in names}, quick=False
    )
    return timed["bare"].median, timed["flags_off"].median, timed["least_bypass"].median


def report(redis_url: str, namespace: str) -> str:
    """The markdown report: the overhead, each step's share of it and of the bare app."""
    bare, off, least = asyncio.run(_overhead(redis_url, namespace))
    built = apps.flags_off(redis_url, namespace)

    async def timed() -> dict[str, Samples]:
        # in a running loop, as in a request: the counts' flush timer is armed once, not
        # replaced by a flush per call
        return time_sync(_steps(built), warmup=2_000, iterations=200, rounds=10, batch=200)

    steps = asyncio.run(timed())
    marking = asyncio.run(_marking())
    overhead = off - bare
    rows = []
    total = 0.0
    for name, samples in steps.items():
        total += samples.median
        rows.append([name, us(samples.median), f"{samples.median / bare:.1%}"])
    total += marking
    rows.append(
        ["mark the response (`X-CacheGate`, two messages)", us(marking), f"{marking / bare:.1%}"]
    )
    rows.append(["calls and awaits joining the steps (the rest)", us(overhead - total), ""])
    rows.append(["**all of it** (`flags_off` - `bare`)", us(overhead), f"{overhead / bare:.1%}"])
    return (
        "# Every layer off on a cached route, step by step\n\n"
        f"`flags_off` {us(off)} against `bare` {us(bare)}: {off / bare:.2f}x "
        f"(medians, one request at a time, rounds interleaved). Each step below timed alone, "
        f"warm, on the same objects (medians of batches). Load average (1 min) "
        f"{os.getloadavg()[0]:.2f}.\n\n"
        + "\n".join(table(["step", "time", "share of bare"], rows))
        + "\n\nThe steps are what a bypass must do at all; with nothing else, they alone are "
        f"{total / bare:.0%} of the bare app. The rest is the price of running them as a "
        "middleware: two coroutines (the responder and its admission), the dispatch, the "
        "clock and the try blocks that keep a failure from leaving a request uncounted.\n\n"
        f"The same steps inlined in one middleware with nothing between them "
        f"(`least_bypass`, `benchmarks/apps.py`), in the same run: {us(least)}, "
        f"{least / bare:.2f}x bare; `flags_off` is {off / least:.2f}x of it.\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.steps", description=__doc__)
    parser.add_argument("--out", type=Path, default=RESULTS / "steps-flags-off.md")
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {0})
    with RedisServer(cpu=1) as server:
        text = report(server.url, f"cgsteps{os.getpid()}")
    args.out.write_text(text, encoding="utf-8")
    print(f"[steps] wrote {relative_paths(str(args.out))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
