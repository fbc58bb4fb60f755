"""L1: middleware overhead, the hit path against the one-GET floor, and fastapi-cache2.

In-process: each app is called directly with an ASGI scope, `receive` and `send` (no HTTP
client, no server), one request at a time, timed per request. Over uvicorn: each app in its own
uvicorn process (one worker, uvloop, httptools) pinned to CPU 0, loaded by `wrk` pinned to
CPU 1 (where the private Redis also runs).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import apps
from benchmarks.harness import (
    REPO,
    Samples,
    free_port,
    pinned,
    python_executable,
    stop_process,
    time_async,
    wait_for_port,
)

EXPECTED_HEADER: dict[str, str | None] = {
    "bare": None,
    "body_read": None,
    "no_policy": None,
    "flags_off": "bypass",
    "least_bypass": "bypass",
    "hit_memory": "hit",
    "hit_redis": "hit",
    "floor_post": None,
    "floor_get": None,
    "fastapi_floor_get": None,
    "fastapi_cachegate_get": "hit",
    "fastapi_cache2_get": None,
}


class Driver:
    """Calls an ASGI app with one request, as a server would, and keeps what it answered."""

    def __init__(self, app: apps.ASGIApp, *, get: bool) -> None:
        self.app = app
        body = b"" if get else apps.POST_BODY
        headers = [
            (b"host", b"bench.local"),
            (b"user-agent", b"cachegate-bench"),
            (b"accept", b"*/*"),
            (b"x-workspace-id", apps.TENANT.encode()),
        ]
        if not get:
            headers += [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
        self.body = body
        self.scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": "GET" if get else "POST",
            "scheme": "http",
            "path": apps.ROUTE,
            "raw_path": apps.ROUTE.encode(),
            "query_string": apps.GET_QUERY if get else b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
        }
        self.status = 0
        self.cachegate: str | None = None
        self.fastapi_cache: str | None = None
        self.received = 0

    async def __call__(self) -> None:
        scope = dict(self.scope)
        scope["state"] = {}
        pending = [{"type": "http.request", "body": self.body, "more_body": False}]

        async def receive() -> apps.Message:
            if pending:
                return pending.pop()
            return {"type": "http.disconnect"}

        async def send(message: apps.Message) -> None:
            if message["type"] == "http.response.start":
                self.status = message["status"]
                self.cachegate = self.fastapi_cache = None
                for name, value in message.get("headers", ()):
                    if name == b"x-cachegate":
                        self.cachegate = value.decode()
                    elif name == b"x-fastapi-cache":
                        self.fastapi_cache = value.decode()
            elif message["type"] == "http.response.body":
                self.received += len(message.get("body", b""))

        await self.app(scope, receive, send)

    def check(self, name: str) -> None:
        expected = EXPECTED_HEADER[name]
        peer_hit = name != "fastapi_cache2_get" or self.fastapi_cache == "HIT"
        if self.status != 200 or self.cachegate != expected or not peer_hit:
            raise RuntimeError(
                f"{name}: answered {self.status} X-CacheGate={self.cachegate!r}, "
                f"expected 200 X-CacheGate={expected!r}"
            )


async def seed_floor(redis_url: str, namespace: str) -> None:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        await client.set(apps.floor_key(namespace), apps.ANSWER_BYTES, ex=3600)
    finally:
        await client.aclose()


@dataclass
class InProcess:
    samples: dict[str, Samples]
    iterations: int
    store: dict[str, Samples]


async def checked_drivers(
    built: dict[str, apps.Built], expect: str | None = None
) -> dict[str, Driver]:
    """A driver per app, each past its first request (a hit variant's miss fills the cache)
    and checked against `EXPECTED_HEADER[expect]` (its own name when `expect` is None)."""
    drivers = {name: Driver(item.app, get=name in apps.GET_APPS) for name, item in built.items()}
    for name, driver in drivers.items():
        await driver()
        await driver()
        driver.check(expect or name)
    return drivers


INSTANCES = 3
"""Each in-process app is built this many times and its requests spread over the copies. On a
shared VM one copy of an app can run ~1.5x slower than another for a whole run (where its
objects landed, it seems); the pooled samples keep that luck from deciding a ratio."""


async def time_apps(
    build: Callable[[], dict[str, apps.Built]],
    *,
    quick: bool,
    expect: str | None = None,
    instances: int = INSTANCES,
) -> dict[str, Samples]:
    """Each app `build` makes, one request at a time, rounds interleaved, checked before and
    after (see `checked_drivers`); `instances` copies of the whole set, each copy taking an
    equal share of the requests, pooled per app copy by copy (so the rounds of two apps still
    line up, for `round_ratios`). The apps are closed after."""
    copies: list[dict[str, apps.Built]] = []
    try:
        drivers: dict[str, Driver] = {}
        for copy in range(instances):
            copies.append(build())
            for name, driver in (await checked_drivers(copies[-1], expect)).items():
                drivers[f"{name}#{copy}"] = driver
        timed = await time_async(
            dict(drivers.items()),
            warmup=(100 if quick else 1_000) // instances,
            iterations=requests(quick) // instances,
            rounds=4 if quick else 10,
        )
        for name, driver in drivers.items():
            driver.check(expect or name.partition("#")[0])
        return {
            name: Samples(
                name,
                [v for n in range(instances) for v in timed[f"{name}#{n}"].values],
                timed[f"{name}#0"].round_size,
            )
            for name in copies[0]
        }
    finally:
        for built in copies:
            for item in built.values():
                await item.aclose()


def requests(quick: bool) -> int:
    """How many requests each in-process variant is timed over."""
    return 2_000 if quick else 20_000


async def in_process(redis_url: str, namespace: str, *, quick: bool) -> InProcess:
    """Every app, one request at a time, interleaved rounds, per-request timings."""
    await seed_floor(redis_url, namespace)
    samples = await time_apps(
        lambda: {name: factory(redis_url, namespace) for name, factory in apps.APPS.items()},
        quick=quick,
    )
    return InProcess(samples, requests(quick), await store_costs(redis_url, namespace, quick=quick))


async def store_costs(redis_url: str, namespace: str, *, quick: bool) -> dict[str, Samples]:
    """Where a Redis hit's store time goes: the floor's GET against CacheGate's lookup.

    "each call in its own task" is the store as it was before issue #15: a client whose pool is
    not `BoundedConnectionPool` (here redis-py's `BlockingConnectionPool`, the pool it had) runs
    every call in a task of its own, as every call did then."""
    import redis.asyncio
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    from cachegate.store import RedisStore

    client = redis.asyncio.Redis.from_url(redis_url)
    entry = f"{namespace}:store-entry"
    generations = (f"{namespace}:store-g1", f"{namespace}:store-g2")
    await client.set(entry, apps.ANSWER_BYTES + b"x" * 64, ex=3600)
    for key in generations:
        await client.set(key, b"1234567890123456789", ex=3600)
    metered = RedisStore.from_url(redis_url, deadline=1.0)  # counts into default_metrics()
    tasked = RedisStore(
        redis.asyncio.Redis(
            connection_pool=redis.asyncio.BlockingConnectionPool.from_url(
                redis_url,
                max_connections=64,
                timeout=None,
                health_check_interval=0,
                retry=Retry(NoBackoff(), 0),
                socket_connect_timeout=1.0,
                socket_timeout=1.0,
            )
        ),
        deadline=1.0,
    )
    keys = [entry, *generations]

    async def get() -> None:
        await client.get(entry)

    async def mget() -> None:
        await client.mget(keys)

    async def mget_deadline() -> None:
        async with asyncio.timeout(1.0):
            await client.mget(keys)

    async def lookup_metered() -> None:
        await metered.lookup(entry, generations)

    async def lookup_tasked() -> None:
        await tasked.lookup(entry, generations)

    try:
        return await time_async(
            {
                "raw GET of the entry (the floor's call)": get,
                "raw MGET of entry + 2 generations": mget,
                "raw MGET inside asyncio.timeout": mget_deadline,
                "RedisStore.lookup, with metrics (as in the gate)": lookup_metered,
                "RedisStore.lookup, each call in its own task (before #15)": lookup_tasked,
            },
            warmup=200,
            iterations=2_000 if quick else 10_000,
            rounds=4 if quick else 10,
        )
    finally:
        await metered.aclose()
        await tasked.aclose()
        await client.aclose()


# --- over uvicorn --------------------------------------------------------------------------------


@dataclass
class WrkResult:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int = 0
    server_cpu_s: float = float("nan")
    """CPU time (user + system) the uvicorn worker spent during the run."""

    @property
    def cpu_us_per_request(self) -> float:
        return self.server_cpu_s / self.requests * 1e6 if self.requests else float("nan")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc), in seconds."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class OverHttp:
    rps: dict[str, list[WrkResult]]
    single: dict[str, WrkResult]
    duration: float
    connections: int
    rounds: int
    available: bool
    note: str = ""


_LUA = """
wrk.method = "{method}"
wrk.headers["X-Workspace-ID"] = "{tenant}"
{extra}
"""


def _scripts(directory: Path) -> dict[str, Path]:
    post = directory / "post.lua"
    body = apps.POST_BODY.decode().replace("\\", "\\\\").replace('"', '\\"')
    post.write_text(
        _LUA.format(
            method="POST",
            tenant=apps.TENANT,
            extra=f'wrk.headers["Content-Type"] = "application/json"\nwrk.body = "{body}"',
        )
    )
    get = directory / "get.lua"
    get.write_text(_LUA.format(method="GET", tenant=apps.TENANT, extra=""))
    return {"POST": post, "GET": get}


def _url(port: int, get: bool) -> str:
    url = f"http://127.0.0.1:{port}{apps.ROUTE}"
    return url + "?" + apps.GET_QUERY.decode() if get else url


def _probe(name: str, port: int) -> None:
    get = name in apps.GET_APPS
    request = urllib.request.Request(
        _url(port, get),
        data=None if get else apps.POST_BODY,
        method="GET" if get else "POST",
        headers={"X-Workspace-ID": apps.TENANT, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        status = response.status
        header = response.headers.get("x-cachegate")
        peer = response.headers.get("x-fastapi-cache")
        response.read()
    expected = EXPECTED_HEADER[name]
    if name == "fastapi_cache2_get" and peer not in ("HIT", "MISS"):
        raise RuntimeError(f"{name} over HTTP: X-FastAPI-Cache={peer!r}")
    if status != 200 or (expected is not None and header != expected and header != "miss"):
        raise RuntimeError(f"{name} over HTTP: {status} X-CacheGate={header!r}")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _latency(text: str, label: str) -> float:
    match = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE)
    return float(match.group(1)) * _UNITS[match.group(2)] if match else float("nan")


def run_wrk(
    url: str, script: Path, *, seconds: float, connections: int, pid: int | None = None
) -> WrkResult:
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(round(seconds), 1)}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    cpu_before = process_cpu_seconds(pid) if pid is not None else float("nan")
    result = subprocess.run(
        pinned(command, 1), capture_output=True, text=True, check=True, timeout=seconds + 30
    )
    cpu = (process_cpu_seconds(pid) - cpu_before) if pid is not None else float("nan")
    text = result.stdout
    total = re.search(r"(\d+) requests in", text)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    socket_errors = re.search(r"Socket errors: (.*)", text)
    failed = int(errors.group(1)) if errors else 0
    if socket_errors:
        failed += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1)))
    return WrkResult(
        requests_per_second=float(rps.group(1)) if rps else 0.0,
        p50_ms=_latency(text, "50%"),
        p99_ms=_latency(text, "99%"),
        errors=failed,
        requests=int(total.group(1)) if total else 0,
        server_cpu_s=cpu,
    )


def over_uvicorn(redis_url: str, namespace: str, *, quick: bool) -> OverHttp:
    """Requests/s of every app under one uvicorn worker, loaded by wrk; rounds interleaved."""
    seconds = 1.0
    rounds = 2 if quick else 10
    connections = 16
    if shutil.which("wrk") is None:
        return OverHttp({}, {}, seconds, connections, rounds, False, "wrk is not installed")
    asyncio.run(seed_floor(redis_url, namespace))
    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    rps: dict[str, list[WrkResult]] = {name: [] for name in apps.APPS}
    single: dict[str, WrkResult] = {}
    with tempfile.TemporaryDirectory(prefix="cgbench-wrk-") as directory:
        scripts = _scripts(Path(directory))
        try:
            for name in apps.APPS:
                port = free_port()
                env = dict(
                    os.environ,
                    BENCH_APP=name,
                    BENCH_REDIS_URL=redis_url,
                    BENCH_NAMESPACE=namespace,
                    PYTHONPATH=str(REPO),
                )
                command = [
                    python_executable(),
                    "-m",
                    "uvicorn",
                    "--factory",
                    "benchmarks.apps:from_env",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--loop",
                    "uvloop",
                    "--http",
                    "httptools",
                    "--no-access-log",
                    "--log-level",
                    "warning",
                ]
                process = subprocess.Popen(pinned(command, 0), cwd=REPO, env=env)
                servers[name] = (process, port)
            for name, (_, port) in servers.items():
                wait_for_port(port, 90.0)  # eleven workers import at once on one CPU
                _probe(name, port)
                _probe(name, port)
            for name, (_, port) in servers.items():
                get = name in apps.GET_APPS
                script = scripts["GET" if get else "POST"]
                run_wrk(_url(port, get), script, seconds=1.0, connections=connections)  # warm-up
            for _ in range(rounds):
                for name, (process, port) in servers.items():
                    get = name in apps.GET_APPS
                    script = scripts["GET" if get else "POST"]
                    rps[name].append(
                        run_wrk(
                            _url(port, get),
                            script,
                            seconds=seconds,
                            connections=connections,
                            pid=process.pid,
                        )
                    )
            for name in ("floor_post", "hit_redis", "hit_memory"):
                process, port = servers[name]
                single[name] = run_wrk(
                    _url(port, False),
                    scripts["POST"],
                    seconds=2 * seconds,
                    connections=1,
                    pid=process.pid,
                )
            for name, (_, port) in servers.items():
                _probe(name, port)
        finally:
            for process, _ in servers.values():
                stop_process(process)
    time.sleep(0.2)
    return OverHttp(rps, single, seconds, connections, rounds, True)
