"""`python -m benchmarks.soak`: 200 concurrent clients for 60 s through uvicorn against Redis.

The demo service (L1 and the L2 embedder; a simulated 20 ms model) runs in its own uvicorn
process on a private `redis-server` (both spawned here, loopback only). Clients loop over three
paths: **hit** (serve tenants, a small fixed set of questions), **miss** (serve tenants, a new
question every time) and **shadow** (dark-launched tenants, the fixed questions). After a
warm-up the server's RSS is read, the load runs, and RSS is read again.

Asserted (exit status 1 otherwise): no failed request (a connection error, a timeout or a
status other than 200), every path answered as labelled at least once, and RSS grown by less
than `--max-rss-growth-mb` (50). Latency percentiles are reported, never asserted; they are
printed and written to `benchmarks/results/soak.md`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.harness import (
    REPO,
    RedisServer,
    delete_prefix,
    free_port,
    percentile,
    pinned,
    stop_process,
    wait_for_port,
)

PATHS = ("hit", "miss", "shadow")
SERVE_TENANTS = [f"ws-{i:03d}" for i in range(1, 11)]
SHADOW_TENANTS = [f"ws-{i:03d}" for i in range(11, 21)]
CLIENTS = [f"client-{i:02d}" for i in range(1, 7)]
QUESTIONS = [
    f"What did the client report about {topic}?"
    for topic in ("sleep", "anxiety", "work", "family", "medication", "appetite", "mood", "panic")
]
EXPECTED = {"hit": {"hit"}, "miss": {"miss"}, "shadow": {"shadow-hit", "shadow-miss"}}
MODEL_LATENCY = 0.02
REQUEST_TIMEOUT = 30.0


def app_from_env() -> object:
    """The soak's server app (uvicorn `--factory`): the demo on `SOAK_REDIS_URL`."""
    from cachegate import CacheGate, Decision, Limits, Mode
    from cachegate.demo.app import Notes, create_app, policies, write_rules
    from cachegate.demo.workload import Catalog
    from cachegate.store import RedisStore

    serve = Decision(l1=Mode.SERVE, l2=Mode.SERVE)
    shadow = Decision(l1=Mode.SHADOW, l2=Mode.SHADOW)
    decisions = {tenant: serve for tenant in SERVE_TENANTS}
    decisions |= {tenant: shadow for tenant in SHADOW_TENANTS}

    class ByTenant:
        def decide(self, tenant: str | None) -> Decision:
            return decisions.get(tenant or "", Decision())

    # a generous deadline: a saturated 2-core machine should not turn hits into bypasses
    store = RedisStore.from_url(os.environ["SOAK_REDIS_URL"], deadline=1.0)
    gate = CacheGate(
        policies=policies(),
        write_rules=write_rules(),
        store=store,
        rollout=ByTenant(),
        namespace=os.environ["SOAK_NAMESPACE"],
        limits=Limits(noise_sample_rate=0.0),
    )
    catalog = Catalog(workspaces=20, clients=len(CLIENTS), notes_per_client=2)
    return create_app(gate, latency=MODEL_LATENCY, notes=Notes.seeded(catalog))


# --- the load ------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the clients saw, per path."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PATHS})
    headers: dict[str, Counter[str]] = field(default_factory=lambda: {p: Counter() for p in PATHS})
    errors: Counter[str] = field(default_factory=Counter)

    def requests(self) -> int:
        return sum(len(values) for values in self.latencies.values()) + sum(self.errors.values())


class Connection:
    """One keep-alive HTTP/1.1 connection: a lean client, so the load costs the server's CPU
    rather than the generator's."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, tenant: str, body: bytes) -> tuple[int, str, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: soak\r\nX-Workspace-ID: {tenant}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:] if line)
        }
        payload = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return status, headers.get("x-cachegate", ""), payload

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
            self.writer = self.reader = None


def _request(path: str, number: int, rng_index: int) -> tuple[str, bytes]:
    client = CLIENTS[rng_index % len(CLIENTS)]
    if path == "miss":
        tenant = SERVE_TENANTS[rng_index % len(SERVE_TENANTS)]
        query = f"One-off question {uuid.uuid4().hex} about the last session"
    else:
        tenants = SERVE_TENANTS if path == "hit" else SHADOW_TENANTS
        tenant = tenants[rng_index % len(tenants)]
        query = QUESTIONS[number % len(QUESTIONS)]
    return tenant, json.dumps({"query": query, "client_id": client}).encode()


async def _client(index: int, port: int, until: float, tally: Tally, record: bool) -> None:
    path = PATHS[index % len(PATHS)]
    connection = Connection(port)
    number = 0
    try:
        while time.monotonic() < until:
            tenant, body = _request(path, number, index // len(PATHS) + number)
            number += 1
            started = time.perf_counter()
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    status, cache, _ = await connection.post("/ai/query", tenant, body)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as error:
                tally.errors[f"{path}: {type(error).__name__}"] += 1
                await connection.close()
                continue
            elapsed = time.perf_counter() - started
            if status != 200:
                tally.errors[f"{path}: HTTP {status}"] += 1
                continue
            if record:
                tally.latencies[path].append(elapsed)
                tally.headers[path][cache] += 1
    finally:
        await connection.close()


async def _load(port: int, clients: int, seconds: float, tally: Tally, record: bool) -> None:
    until = time.monotonic() + seconds
    await asyncio.gather(*(_client(i, port, until, tally, record) for i in range(clients)))


def rss_mb(pid: int) -> float:
    """Resident set size of a process, from /proc, in MiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


# --- the run -------------------------------------------------------------------------------------


@dataclass
class Result:
    clients: int
    seconds: float
    warmup: float
    tally: Tally
    rss_start: float
    rss_end: float
    rss_samples: list[tuple[float, float]]
    wall: float
    counters: dict[str, float]
    server_log: Counter[str]


def run(clients: int, seconds: float, warmup: float) -> Result:
    """Spawn Redis and the server, warm up, measure, stop everything."""
    namespace = f"cgsoak{os.getpid()}"
    two_cpus = (os.cpu_count() or 1) >= 2
    with RedisServer(cpu=1 if two_cpus else None) as redis_server:
        port = free_port()
        env = {
            **os.environ,
            "SOAK_REDIS_URL": redis_server.url,
            "SOAK_NAMESPACE": namespace,
            "PYTHONPATH": str(REPO),
        }
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "benchmarks.soak:app_from_env",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
            "--backlog",
            "4096",
        ]
        server_log = tempfile.TemporaryFile()  # noqa: SIM115  (closed in the finally below)
        server = subprocess.Popen(
            pinned(command, 0 if two_cpus else None),
            cwd=REPO,
            env=env,
            stdout=server_log,
            stderr=subprocess.STDOUT,
        )
        if two_cpus and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {1})  # the load generator beside Redis, off the server's CPU
        try:
            wait_for_port(port, 30.0)
            warm = Tally()
            asyncio.run(_load(port, clients, warmup, warm, record=False))
            if warm.errors:
                raise SystemExit(f"errors during warm-up: {dict(warm.errors)}")
            rss_start = rss_mb(server.pid)
            tally = Tally()
            samples: list[tuple[float, float]] = [(0.0, rss_start)]
            started = time.monotonic()

            async def measured() -> None:
                load = asyncio.ensure_future(_load(port, clients, seconds, tally, record=True))
                while not load.done():
                    await asyncio.wait({load}, timeout=10.0)
                    samples.append((time.monotonic() - started, rss_mb(server.pid)))
                await load

            asyncio.run(measured())
            wall = time.monotonic() - started
            rss_end = rss_mb(server.pid)
            counters = _cache_counters(port)
        finally:
            stop_process(server)
            delete_prefix(redis_server.url, namespace)
            server_log.seek(0)
            log_lines = Counter(
                line.decode(errors="replace").strip() for line in server_log.read().splitlines()
            )
            server_log.close()
    return Result(
        clients, seconds, warmup, tally, rss_start, rss_end, samples, wall, counters, log_lines
    )


def _cache_counters(port: int) -> dict[str, float]:
    """The server's non-zero bypass and store-failure counters, from its `/metrics`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith(("cachegate_bypasses_total", "cachegate_store_failures_total")):
            name, _, value = line.rpartition(" ")
            if float(value) > 0:
                found[name] = float(value)
    return found


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


def render(result: Result, failures: list[str]) -> str:
    tally = result.tally
    now = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    lines = [
        f"# CacheGate soak: {result.clients} concurrent clients through uvicorn against Redis",
        "",
        f"`make soak` (`python -m benchmarks.soak`), {now} UTC, on {platform.machine()} with "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}. The demo service "
        "(L1 + L2 embedder, simulated model "
        f"{MODEL_LATENCY * 1000:.0f} ms) in one uvicorn worker pinned to CPU 0; a private "
        "redis-server and the load generator (keep-alive HTTP/1.1, one connection per client) "
        f"on CPU 1. {result.clients} clients, a third per path, for {result.seconds:.0f} s after "
        f"a {result.warmup:.0f} s warm-up. Latency is measured by the clients (it includes their "
        "own queueing on the shared CPU); reported, not asserted.",
        "",
        "| path | requests | req/s | p50 | p90 | p99 | max | X-CacheGate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    total = 0
    for path in PATHS:
        values = tally.latencies[path]
        total += len(values)
        headers = ", ".join(f"{k or '(none)'} {v}" for k, v in tally.headers[path].most_common())
        lines.append(
            f"| {path} | {len(values):,} | {len(values) / result.wall:,.0f} | "
            f"{ms(percentile(values, 0.5))} | {ms(percentile(values, 0.9))} | "
            f"{ms(percentile(values, 0.99))} | {ms(max(values, default=float('nan')))} | "
            f"{headers} |"
        )
    lines += [
        f"| all | {total:,} | {total / result.wall:,.0f} | | | | | |",
        "",
        f"Failed requests: **{sum(tally.errors.values())}**"
        + (f" ({dict(tally.errors)})" if tally.errors else "")
        + ".",
        "",
        f"Server RSS: {result.rss_start:.1f} MiB after the warm-up, {result.rss_end:.1f} MiB at "
        f"the end (**{result.rss_end - result.rss_start:+.1f} MiB**); every 10 s: "
        + ", ".join(f"{mb:.1f}" for _, mb in result.rss_samples)
        + " MiB.",
        "",
        "Server counters (warm-up included) that are not zero: "
        + (", ".join(f"`{k}` {v:,.0f}" for k, v in result.counters.items()) or "none")
        + ". A bypass is the fail-open path: the request was answered fresh, not failed.",
        "",
        "Server log lines: "
        + ("; ".join(f"{n:,} x `{line}`" for line, n in result.server_log.most_common(6)) or "none")
        + ".",
        "",
        "Result: " + ("**passed**" if not failures else "**failed**: " + "; ".join(failures)),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--max-rss-growth-mb", type=float, default=50.0)
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "soak.md", help="report path"
    )
    args = parser.parse_args(argv)
    if args.clients < len(PATHS) or args.seconds <= 0 or args.warmup < 0:
        parser.error("need at least 3 clients and a positive duration")
    result = run(args.clients, args.seconds, args.warmup)
    failures = []
    if result.tally.errors:
        failures.append(f"{sum(result.tally.errors.values())} failed requests")
    for path in PATHS:
        seen = set(result.tally.headers[path])
        if not seen & EXPECTED[path]:
            failures.append(f"no {path} answered as {sorted(EXPECTED[path])} (saw {sorted(seen)})")
    growth = result.rss_end - result.rss_start
    if growth >= args.max_rss_growth_mb:
        failures.append(f"RSS grew {growth:.1f} MiB (limit {args.max_rss_growth_mb:.0f})")
    text = render(result, failures)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
