"""Freshness under faults (issue 11): what its checks cost on the hit path, and what a request
waits when a Redis Cluster master is killed.

1. The in-process hit path on `RedisStore` (the L1 group's raw ASGI driver and ~1 KiB answer,
   variants interleaved): as shipped; without the epoch check (the server identity read on
   connect and compared on every lookup: the variant reports epoch 0, as a store that cannot go
   back in time does); and with the store call bounded by `asyncio.timeout` inside the request's
   task, as before the issue (a cancelled redis-py call then finishes its cleanup on the
   request's time; now the call runs in its own task and the request waits at most the
   deadline).
2. Fault recovery: a three-master Redis Cluster (the test suite's `support.redis_cluster`,
   spawned on free ports), `RedisStore` with its 50 ms deadline; a tenant on a master that is
   SIGKILLed, and one elsewhere; requests one at a time for 3 s after the kill. Reported per
   tenant: the wait added to the fresh path (median, p95, max), the store calls the slowest
   request made, and the bound: the deadline times the store calls on the path.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from benchmarks import apps
from benchmarks.harness import REPO, Samples
from benchmarks.tables import table, us

if TYPE_CHECKING:
    from cachegate.store import RedisStore

T = TypeVar("T")
DEADLINE = 0.05
STORE_CALLS = 3
"""The most store calls one request makes (lookup, generations, write of the fresh answer)."""


@dataclass
class FaultRow:
    tenant: str
    requests: int
    paths: dict[str, int]
    added: Samples
    worst_calls: int


@dataclass
class FreshnessResult:
    hit: dict[str, Samples] = field(default_factory=dict)
    faults: list[FaultRow] = field(default_factory=list)
    fresh_ns: float = 0.0
    note: str = ""


def _stores() -> tuple[type[RedisStore], type[RedisStore]]:
    from cachegate.store import RedisStore

    class NoEpochCheck(RedisStore):
        """Every lookup reports epoch 0: the cost of the check is the difference."""

        def _epoch(self, key: str) -> int:
            return 0

    class TimeoutInTask(RedisStore):
        """The store call bounded by `asyncio.timeout` in the request's own task (before)."""

        async def _call(
            self,
            operation: str,
            call: Callable[[], Awaitable[T]],
            *,
            deadline: float,
            guarded: bool = True,
            feeds_breaker: bool = True,
        ) -> T:
            async with asyncio.timeout(deadline):
                result = await call()
            self.breaker.success()
            return result

    return NoEpochCheck, TimeoutInTask


async def hit_path(redis_url: str, namespace: str, quick: bool) -> dict[str, Samples]:
    from benchmarks.l1 import time_apps
    from cachegate.store import RedisStore

    no_epoch, in_task = _stores()
    stores: dict[str, type[RedisStore]] = {
        "hit, RedisStore (shipped)": RedisStore,
        "hit, no epoch check": no_epoch,
        "hit, deadline in the request's task (before)": in_task,
    }

    def build() -> dict[str, apps.Built]:
        return {
            name: apps.gated(
                apps.post_policy(), kind.from_url(redis_url, deadline=1.0), f"{namespace}fr{i}"
            )
            for i, (name, kind) in enumerate(stores.items())
        }

    return await time_apps(build, quick=quick, expect="hit_memory")


def _tenant_on(cluster: Any, namespace: str, node: Any, *, other: bool) -> str:
    from cachegate.keys import CacheScope, KeySpace

    space = KeySpace(namespace)
    for index in range(500):
        tenant = f"tenant-{index}"
        on_node = cluster.node_for(space.generation_keys(CacheScope(tenant, None))[0]) is node
        if on_node != other:
            return tenant
    raise RuntimeError("no tenant found")


async def cluster_fault(namespace: str, quick: bool) -> tuple[list[FaultRow], float]:
    """Kill a master; time requests for tenants on it and elsewhere (added wait per request)."""
    sys.path.insert(0, str(REPO / "tests"))
    from support.redis_cluster import RedisCluster

    from benchmarks.l1 import Driver
    from cachegate.store import RedisStore

    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed")
    cluster = RedisCluster(binary)
    cluster.start()
    try:
        store = RedisStore.from_url(cluster.url, cluster=True, deadline=DEADLINE)
        built = apps.gated(apps.post_policy(), store, namespace)
        await store.start()
        victim = cluster.nodes[1]
        tenants = {
            "on the killed master": _tenant_on(cluster, namespace, victim, other=False),
            "on another master": _tenant_on(cluster, namespace, victim, other=True),
        }
        drivers = {}
        for name, tenant in tenants.items():
            driver = Driver(built.app, get=False)
            driver.scope["headers"] = [
                (k, tenant.encode() if k == b"x-workspace-id" else v)
                for k, v in driver.scope["headers"]
            ]
            for _ in range(3):
                await driver()
            drivers[name] = driver
        fresh = Driver(apps.starlette_app(), get=False)
        fresh_ns = []
        for _ in range(200):
            started = time.perf_counter_ns()
            await fresh()
            fresh_ns.append(time.perf_counter_ns() - started)
        fresh_ns.sort()
        fresh_median = float(fresh_ns[len(fresh_ns) // 2])
        counts = store.metrics
        assert counts is not None
        victim.kill()
        rows = {name: FaultRow(t, 0, {}, Samples(name), 0) for name, t in tenants.items()}
        ended = time.monotonic() + (2.0 if quick else 3.0)
        while time.monotonic() < ended:
            for name, driver in drivers.items():
                before = _store_calls(counts)
                started = time.perf_counter_ns()
                await driver()
                took = time.perf_counter_ns() - started
                calls = _store_calls(counts) - before
                row = rows[name]
                row.requests += 1
                path = driver.cachegate or "?"
                row.paths[path] = row.paths.get(path, 0) + 1
                added = max(took - fresh_median, 0.0)
                if added >= max(row.added.values, default=0.0):
                    row.worst_calls = int(calls)
                row.added.values.append(added)
            await asyncio.sleep(0.01)
        await built.aclose()
        await store.aclose()
        return list(rows.values()), fresh_median
    finally:
        cluster.close()


def _store_calls(metrics: Any) -> float:
    """Store calls attempted so far: successes (histogram counts) and failures."""
    total = 0.0
    for family in (metrics.store_duration, metrics.store_failures):
        for metric in family.collect():
            for sample in metric.samples:
                if sample.name.endswith("_count") or sample.name.endswith("_total"):
                    total += sample.value
    return total


def run(redis_url: str, namespace: str, *, quick: bool) -> FreshnessResult:
    result = FreshnessResult()
    result.hit = asyncio.run(hit_path(redis_url, namespace, quick))
    try:
        result.faults, result.fresh_ns = asyncio.run(cluster_fault(f"{namespace}frc", quick))
    except (RuntimeError, ImportError) as error:
        result.note = f"{type(error).__name__}: {error}"
    return result


def render(result: FreshnessResult) -> list[str]:
    """The report section (called by `report.render`)."""
    lines = ["## 8. Freshness under faults (issue 11)", ""]
    lines += [
        "Hit path cost of the checks (in-process, raw ASGI driver, `RedisStore`, rounds "
        "interleaved):",
        "",
    ]
    base = result.hit["hit, RedisStore (shipped)"].median
    rows = []
    for name, s in result.hit.items():
        rows.append([name, us(s.median), us(s.p95), f"{s.median / base:.3f}x"])
    lines += table(["variant", "median", "p95", "ratio vs shipped"], rows)
    lines += ["", "Fault recovery: a Redis Cluster master SIGKILLed (50 ms store deadline):", ""]
    if result.note:
        return [*lines, f"Not run: {result.note}.", ""]
    bound = DEADLINE * STORE_CALLS * 1e9
    rows = []
    for row in result.faults:
        s = row.added
        paths = ", ".join(f"{k} {v}" for k, v in sorted(row.paths.items()))
        rows.append(
            [
                s.name,
                str(row.requests),
                paths,
                us(s.median),
                us(s.p95),
                us(max(s.values, default=0.0)),
                str(row.worst_calls),
                us(bound),
            ]
        )
    lines += table(
        [
            "tenant",
            "requests",
            "paths",
            "added wait p50",
            "p95",
            "max",
            "store calls (slowest)",
            "bound (deadline x calls)",
        ],
        rows,
    )
    lines += [
        "",
        f"Added wait = request time minus the bare app's median ({us(result.fresh_ns)}).",
        "",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.freshness [--quick]`: this group alone, printed."""
    from benchmarks.harness import run_alone

    return run_alone("benchmarks.freshness", "cgbenchfresh", run, render, argv)


if __name__ == "__main__":
    raise SystemExit(main())
