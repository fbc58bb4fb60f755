"""Timing, statistics, a private Redis server, round-trip counting and the machine description.

Every timing here is `time.perf_counter_ns` around one operation, after a warm-up, over many
iterations run in interleaved rounds (so drift hits every variant alike); the report uses the
median and the 95th percentile. Nothing asserts on a time.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


# --- statistics ----------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The `q` quantile (0..1) of `values`, linearly interpolated."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class Samples:
    """Durations of one variant, in nanoseconds."""

    name: str
    values: list[float] = field(default_factory=list)
    round_size: int = 0
    """How many consecutive values each round took (0: not timed in rounds)."""

    @property
    def median(self) -> float:
        return percentile(self.values, 0.5)

    @property
    def p95(self) -> float:
        return percentile(self.values, 0.95)

    @property
    def count(self) -> int:
        return len(self.values)


def round_ratios(ours: Samples, base: Samples) -> list[float]:
    """`ours` over `base` round by round (the medians of what each took in the same round):
    how far the machine moved one ratio during the run. Empty unless both were timed in the
    same rounds."""
    size = ours.round_size
    if not size or size != base.round_size or len(ours.values) != len(base.values):
        return []
    return [
        percentile(ours.values[i : i + size], 0.5) / percentile(base.values[i : i + size], 0.5)
        for i in range(0, len(ours.values), size)
    ]


def _rounds(
    variants: dict[str, Any], samples: dict[str, Samples], iterations: int, rounds: int
) -> Iterator[tuple[Any, list[float], int]]:
    """Each round, each variant in turn: its call, where its samples go, and how many to take."""
    per_round = max(iterations // rounds, 1)
    for taken in samples.values():
        taken.round_size = per_round
    for _ in range(rounds):
        for name, call in variants.items():
            gc.collect()
            yield call, samples[name].values, per_round


async def time_async(
    variants: dict[str, Callable[[], Awaitable[Any]]],
    *,
    warmup: int,
    iterations: int,
    rounds: int,
) -> dict[str, Samples]:
    """Time each variant's coroutine function, `iterations` per round, rounds interleaved."""
    samples = {name: Samples(name) for name in variants}
    clock = time.perf_counter_ns
    for call in variants.values():
        for _ in range(warmup):
            await call()
    for call, values, count in _rounds(variants, samples, iterations, rounds):
        for _ in range(count):
            start = clock()
            await call()
            values.append(clock() - start)
    return samples


def time_sync(
    variants: dict[str, Callable[[], Any]],
    *,
    warmup: int,
    iterations: int,
    rounds: int,
    batch: int = 1,
) -> dict[str, Samples]:
    """Time plain functions; with `batch` > 1 each sample is the mean of `batch` calls."""
    samples = {name: Samples(name) for name in variants}
    clock = time.perf_counter_ns
    for call in variants.values():
        for _ in range(warmup):
            call()
    for call, values, count in _rounds(variants, samples, iterations, rounds):
        for _ in range(count):
            start = clock()
            for _ in range(batch):
                call()
            values.append((clock() - start) / batch)
    return samples


# --- processes and ports -------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on loopback nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    """Block until something accepts connections on loopback `port`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")


def pinned(command: list[str], cpu: int | None) -> list[str]:
    """`command` pinned to one CPU with taskset when there are two or more and taskset exists."""
    if cpu is None or shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        return command
    return ["taskset", "-c", str(cpu), *command]


def stop_process(process: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """Terminate one process we started, then kill it if it does not stop."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


class RedisServer:
    """A private, throwaway `redis-server` on a free port: no persistence, debug command local.

    The benchmarks use it so that command statistics count only their own traffic and the
    1 M-key invalidation runs never touch the shared server.
    """

    def __init__(self, *, cpu: int | None = None) -> None:
        self.port = free_port()
        self.cpu = cpu
        self.process: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="cgbench-redis-")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        base = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self._dir.name,
            "--maxmemory",
            "0",
            "--loglevel",
            "warning",
        ]
        for extra in (["--enable-debug-command", "local"], []):
            self.process = subprocess.Popen(
                pinned(base + extra, self.cpu), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            try:
                wait_for_port(self.port, 5.0)
                return self
            except TimeoutError:
                stop_process(self.process)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None
        self._dir.cleanup()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_alone(
    prog: str,
    namespace: str,
    run: Callable[..., Any],
    render: Callable[[Any], list[str]],
    argv: list[str] | None,
) -> int:
    """One group by itself (`python -m <prog> [--quick]`) on a private Redis; prints its section."""
    import argparse

    parser = argparse.ArgumentParser(prog=f"python -m {prog}")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    with RedisServer() as server:
        try:
            result = run(server.url, namespace, quick=args.quick)
        finally:
            delete_prefix(server.url, namespace)
    print("\n".join(render(result)))
    return 0


def delete_prefix(url: str, prefix: str) -> int:
    """Delete every key starting with `prefix` (never a FLUSH); the number deleted."""
    import redis

    client = redis.Redis.from_url(url)
    deleted = 0
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=prefix + "*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += client.unlink(*batch)
                batch.clear()
        if batch:
            deleted += client.unlink(*batch)
    finally:
        client.close()
    return deleted


# --- counting store traffic ----------------------------------------------------------------------


class RoundTrips:
    """Counts client round trips of every redis-py client (sync and asyncio) while active.

    redis-py writes each command, and each whole pipeline, with one `send_packed_command`
    call: one call is one round trip. Only used in untimed passes.
    """

    def __init__(self) -> None:
        self.count = 0

    @contextlib.contextmanager
    def counting(self) -> Iterator[RoundTrips]:
        import redis.asyncio.connection as async_connection
        import redis.connection as sync_connection

        counter = self
        patched: list[tuple[Any, Callable[..., Any]]] = []
        sync_class: Any = sync_connection.AbstractConnection
        async_class: Any = async_connection.AbstractConnection
        sync_original: Callable[..., Any] = sync_class.send_packed_command
        async_original: Callable[..., Awaitable[Any]] = async_class.send_packed_command

        def sync_send(self: Any, *args: Any, **kwargs: Any) -> Any:
            counter.count += 1
            return sync_original(self, *args, **kwargs)

        async def async_send(self: Any, *args: Any, **kwargs: Any) -> Any:
            counter.count += 1
            return await async_original(self, *args, **kwargs)

        sync_class.send_packed_command = sync_send
        async_class.send_packed_command = async_send
        patched.extend([(sync_class, sync_original), (async_class, async_original)])
        try:
            yield self
        finally:
            for cls, original in patched:
                cls.send_packed_command = original


def command_calls(url: str) -> int:
    """Total commands the server has executed (INFO commandstats), less INFO itself."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    total = 0
    for name, value in stats.items():
        if name.startswith("cmdstat_") and name not in ("cmdstat_info", "cmdstat_hello"):
            total += int(value["calls"])
    return total


# --- the machine ---------------------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def redis_version(url: str) -> str:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return str(client.info("server").get("redis_version", "unknown"))
    finally:
        client.close()


def package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def cpu_ticks() -> tuple[int, int] | None:
    """(stolen, total) CPU ticks of all CPUs so far, from /proc/stat: the time the VM's host
    gave to others while this machine wanted to run (None where there is no /proc/stat)."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(value) for value in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    steal = fields[7] if len(fields) > 7 else 0
    return steal, sum(fields[:8])


def machine(redis_url: str) -> dict[str, str]:
    """What the results were measured on: no hostname, no path."""
    cores = os.cpu_count()
    wrk = "not installed"
    if shutil.which("wrk"):
        result = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
        wrk = (result.stdout or result.stderr).split("Copyright")[0].strip() or "unknown"
    return {
        "CPU": cpu_model(),
        "cores": str(cores),
        "memory": _memory(),
        "OS": f"{platform.system()} {platform.release()}",
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "Redis server": redis_version(redis_url),
        "redis-py": package_version("redis") + f" (hiredis {package_version('hiredis')})",
        "load generator": wrk,
        "cachegate": package_version("cachegate"),
        "starlette": package_version("starlette"),
        "fastapi": package_version("fastapi"),
        "uvicorn": package_version("uvicorn")
        + f" (uvloop {package_version('uvloop')}, httptools {package_version('httptools')})",
        "fastapi-cache2": package_version("fastapi-cache2"),
        "langchain-classic / langchain-community": package_version("langchain-classic")
        + " / "
        + package_version("langchain-community"),
        "redisvl": package_version("redisvl"),
        "cohere": package_version("cohere"),
        "UnleashClient": package_version("UnleashClient"),
    }


def _memory() -> str:
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    return "unknown"


def python_executable() -> str:
    return sys.executable


def relative_paths(text: str) -> str:
    """`text` without this machine's paths: the environment's, the repository's, the stdlib's."""
    import sysconfig

    paths = sysconfig.get_paths()
    prefixes = {paths["purelib"], paths["platlib"], str(REPO), paths["stdlib"]}
    for prefix in sorted(prefixes, key=len, reverse=True):
        text = text.replace(prefix + os.sep, "")
    return text


def call_tree(profiler: Any, *, show: str = "") -> str:
    """A pyinstrument profile as text: the call tree, then the functions by own time.

    Library frames are folded into one line each run, except those whose file path matches
    `show` (a regular expression, e.g. the client library a hot path spends its time in).
    """
    options = {"show_regex": show} if show else None
    tree = profiler.output_text(unicode=True, color=False, processor_options=options)
    flat = profiler.output_text(unicode=True, color=False, flat=True).splitlines()
    start = next((i + 1 for i, line in enumerate(flat) if line.startswith("Profile at")), 0)
    own = [line for line in flat[start:] if line.strip()][:40]
    text = tree + "\n\nOwn time by function (the 40 largest):\n\n" + "\n".join(own) + "\n"
    return relative_paths(text)


def profile_main(
    description: str | None,
    default_calls: int,
    profile: Callable[[int], str],
) -> None:
    """The command line of a one-path profile script: `--out FILE` (or print), `--calls N`,
    pinned to CPU 0 when there are two (the private servers take CPU 1)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--calls", type=int, default=default_calls)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {0})
    text = profile(args.calls)
    if args.out is None:
        print(text)
    else:
        args.out.write_text(text)
