"""Freshness under faults (issue 11), with real `redis-server` processes and, where the case is
about other processes, real uvicorn processes sharing one Redis and one notes database.

Each test is an operator's bad day: Redis restarted from its RDB or AOF, a lagging replica
promoted, Redis full under `noeviction`, the writer's path to Redis cut and the writer
restarted, a write finished in a `BackgroundTask`, a generation that is not an integer. In each,
once a client has seen its write succeed, no answer computed before it is served as a hit.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import httpx
import pytest
import redis
from conftest import delete_namespace
from prometheus_client.parser import text_string_to_metric_families
from support.apps import Harness
from support.components import missing
from support.freshness_app import INDEXING_DELAY, create_db
from support.redis_server import RedisServer, free_port, redis_server_binary
from support.stores import fresh_metrics
from support.tcp_proxy import TcpProxy

from cachegate import CacheScope
from cachegate.store import RedisStore

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent


# ---- helpers -----------------------------------------------------------------------------------


@pytest.fixture
def binary() -> str:
    found = redis_server_binary()
    if found is None:
        missing("redis-server")
    assert found is not None
    return found


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cg-fresh-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def spawn(binary: str, directory: Path, *options: str) -> RedisServer:
    directory.mkdir(parents=True, exist_ok=True)
    server = RedisServer(binary, directory=str(directory), options=options)
    server.start()
    return server


async def answers(h: Harness, times: int = 6) -> list[tuple[str, list[str]]]:
    """`times` identical reads: (X-CacheGate, the notes in the answer) each."""
    seen = []
    for _ in range(times):
        response = await h.ask()
        assert response.status_code == 200
        seen.append((response.headers["x-cachegate"], response.json()["notes"]))
        await anyio.sleep(0.05)
    return seen


def assert_fresh(seen: list[tuple[str, list[str]]], note: str) -> None:
    """No answer without `note` (computed before the write), and caching resumed."""
    stale = [(path, notes) for path, notes in seen if note not in notes]
    assert stale == [], f"pre-write answers after the write: {seen}"
    assert ("hit", seen[-1][1]) == seen[-1], f"caching did not resume: {seen}"


def store_for(url: str) -> RedisStore:
    store = RedisStore.from_url(url, deadline=0.5, metrics=fresh_metrics())
    store.breaker.cooldown = 0.2
    return store


async def warm(h: Harness) -> None:
    assert [(await h.ask()).headers["x-cachegate"] for _ in range(2)] == ["miss", "hit"]


# ---- 1. a restart from persistence -------------------------------------------------------------


async def test_a_restart_from_its_rdb_never_serves_a_pre_write_answer(
    binary: str, workdir: Path, namespace: str
) -> None:
    server = spawn(binary, workdir)
    store = store_for(server.url)
    try:
        async with Harness(store=store, namespace=namespace) as h:
            await warm(h)
            with server.client() as admin:
                admin.save()  # as Redis's default `save` schedule does
            assert (await h.write("c1", notes="after the snapshot")).status_code == 201
            server.stop()
            server.start()  # loads dump.rdb: the entry and its old generations are back
            seen = await answers(h)
    finally:
        await store.aclose()
        server.close()
    assert_fresh(seen, "after the snapshot")
    assert h.sample("cachegate_store_epoch_changes_total") >= 1


async def test_a_restart_from_an_aof_that_lost_its_last_second_never_serves_a_pre_write_answer(
    binary: str, workdir: Path, namespace: str
) -> None:
    """`appendfsync everysec` loses up to a second on a power cut: the AOF directory as it was
    before the write is put back before Redis restarts, as the disk would have it."""
    server = spawn(binary, workdir, "--appendonly", "yes", "--appendfsync", "everysec")
    store = store_for(server.url)
    aof, saved = workdir / "appendonlydir", workdir / "saved-aof"
    try:
        async with Harness(store=store, namespace=namespace) as h:
            await warm(h)
            shutil.copytree(aof, saved)
            assert (await h.write("c1", notes="lost with the power")).status_code == 201
            server.stop()
            shutil.rmtree(aof)
            shutil.copytree(saved, aof)
            server.start()
            seen = await answers(h)
    finally:
        await store.aclose()
        server.close()
    assert_fresh(seen, "lost with the power")


# ---- 2. a lagging replica promoted -------------------------------------------------------------


def replication(server: RedisServer) -> dict[str, str]:
    with server.client() as client:
        info = client.info("replication")
    return {str(key): str(value) for key, value in info.items()}


async def test_a_promoted_lagging_replica_never_serves_a_pre_write_answer(
    binary: str, workdir: Path, namespace: str
) -> None:
    master = spawn(binary, workdir / "master")
    async with TcpProxy(master.port) as link, TcpProxy(master.port) as front:
        replica = spawn(binary, workdir / "replica", "--replicaof", "127.0.0.1", str(link.port))
        store = store_for(f"redis://127.0.0.1:{front.port}/0")
        try:
            limit = time.monotonic() + 10
            while replication(replica).get("master_link_status") != "up":
                assert time.monotonic() < limit, "the replica never synced"
                await anyio.sleep(0.05)
            async with Harness(store=store, namespace=namespace) as h:
                await warm(h)
                with master.client() as admin:  # in a thread: the proxies run on this loop
                    acked = await anyio.to_thread.run_sync(admin.wait, 1, 900)
                assert acked == 1  # the entry is on the replica
                link.set_mode("blackhole")  # replication lags from here
                assert (await h.write("c1", notes="never replicated")).status_code == 201
                master.stop()
                with replica.client() as admin:
                    admin.execute_command("REPLICAOF", "NO", "ONE")
                front.upstream = ("127.0.0.1", replica.port)  # the failover, as Sentinel does
                seen = await answers(h)
        finally:
            await store.aclose()
            replica.close()
            master.close()
    assert_fresh(seen, "never replicated")


# ---- 7. a generation that is not an integer ----------------------------------------------------


async def test_a_generation_that_is_not_an_integer_is_treated_as_lost(
    spawned_redis: RedisServer, namespace: str
) -> None:
    store = store_for(spawned_redis.url)
    try:
        async with Harness(store=store, namespace=namespace) as h:
            await warm(h)
            generation_keys = h.gate.keyspace.invalidation_keys(CacheScope("t1", "c1"))
            with spawned_redis.client() as admin:
                for key in generation_keys:
                    admin.set(key, b"not a number", ex=86_400)
            assert [(await h.ask()).headers["x-cachegate"] for _ in range(2)] == ["miss", "hit"]
            assert (await h.write("c1", notes="after the garbage")).status_code == 201
            assert not h.gate.invalidator.is_pending(CacheScope("t1", "c1"))
            seen = await answers(h, 3)
            with spawned_redis.client() as admin:
                values = [admin.get(key) for key in generation_keys]
        assert_fresh(seen, "after the garbage")
        assert all(value is not None and value.isdigit() for value in values), values
    finally:
        await store.aclose()


# ---- processes sharing one Redis and one database ----------------------------------------------


class AppProcess:
    """One uvicorn process of `support.freshness_app`. Waiting on it never blocks the event
    loop: the tests' TCP proxies run on it."""

    def __init__(self, environ: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable, "-m", "uvicorn", "--factory", "support.freshness_app:make_app",
            "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning",
        ]  # fmt: skip
        self.process = subprocess.Popen(command, env=environ, cwd=ROOT)

    async def ready(self) -> AppProcess:
        limit = time.monotonic() + 30
        async with httpx.AsyncClient(timeout=1) as client:
            while True:
                try:
                    await client.get(self.url + "/health")
                    return self
                except httpx.TransportError:
                    if time.monotonic() > limit or self.process.poll() is not None:
                        await self.stop()
                        pytest.fail("the app process did not start")
                    await anyio.sleep(0.1)

    async def metric(self, name: str) -> float:
        async with httpx.AsyncClient(timeout=5) as client:
            text = (await client.get(self.url + "/metrics")).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name:
                    return sample.value
        raise AssertionError(f"{name} not exposed")

    async def stop(self) -> int | None:
        """SIGTERM (uvicorn's graceful shutdown runs the lifespan shutdown) and wait; uvicorn
        re-raises the signal once shut down, so a clean stop is -SIGTERM (or 0)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await anyio.to_thread.run_sync(self.process.wait, 20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


CLEAN_STOP = (0, -signal.SIGTERM)


@pytest.fixture
def environ(workdir: Path, namespace: str) -> dict[str, str]:
    database = workdir / "notes.db"
    create_db(str(database))
    return {
        **os.environ,
        "NOTES_DB": str(database),
        "CACHEGATE_TEST_NAMESPACE": namespace,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT / "src")]),
    }


async def read(client: httpx.AsyncClient, url: str) -> tuple[str, list[str]]:
    response = await client.post(
        url + "/ai/query",
        json={"query": "how is the client?", "client_id": "c1"},
        headers={"x-workspace-id": "w1"},
    )
    assert response.status_code == 200
    return response.headers["x-cachegate"], response.json()["notes"]


async def write(client: httpx.AsyncClient, url: str, text: str, path: str = "/notes") -> None:
    response = await client.post(
        url + path, json={"client_id": "c1", "text": text}, headers={"x-workspace-id": "w1"}
    )
    assert response.status_code == 201


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=20) as client:
        yield client


@pytest.fixture
async def processes() -> AsyncIterator[list[AppProcess]]:
    started: list[AppProcess] = []
    yield started
    for process in started:
        await process.stop()


# ---- 3. a Redis that refuses writes ------------------------------------------------------------


async def test_a_full_redis_under_noeviction_serves_no_pre_write_hit_in_another_process(
    binary: str,
    workdir: Path,
    environ: dict[str, str],
    http: httpx.AsyncClient,
    processes: list[AppProcess],
) -> None:
    server = spawn(binary, workdir / "redis", "--maxmemory", "4mb")  # default: noeviction
    environ = {**environ, "REDIS_URL": server.url}
    try:
        writer, reader = AppProcess(environ), AppProcess(environ)
        processes += [writer, reader]
        await writer.ready()
        await reader.ready()
        assert await reader.metric("cachegate_store_noeviction") == 1  # detected at start
        assert [(await read(http, reader.url))[0] for _ in range(2)] == ["miss", "hit"]
        with server.client() as admin:
            filler = 0
            for size in (65536, 1024, 8):  # until even a tiny write is refused
                while True:
                    try:
                        admin.set(f"filler:{filler}", b"x" * size)
                    except redis.exceptions.OutOfMemoryError:
                        break
                    filler += 1
            # Memory moves a little as buffers come and go: pin it over the limit.
            admin.config_set("maxmemory", "1mb")
            await write(http, writer.url, "written while full")
            seen = [await read(http, reader.url) for _ in range(4)]
            assert all(path != "hit" for path, _ in seen), seen
            assert all("written while full" in notes for _, notes in seen), seen
            assert await reader.metric("cachegate_store_writes_refused") == 1
            assert await writer.metric("cachegate_invalidations_pending") == 1
            admin.config_set("maxmemory", "0")
        # Room again: the writer's pending invalidation lands, hits come back, fresh ones.
        limit = time.monotonic() + 15
        while (found := await read(http, reader.url))[0] != "hit":
            assert time.monotonic() < limit, "hits never came back"
            await anyio.sleep(0.2)
        assert "written while full" in found[1]
    finally:
        for process in processes:
            await process.stop()
        server.close()


async def test_noeviction_is_reported_at_start_and_a_refused_config_get_is_survived(
    spawned_redis: RedisServer,
) -> None:
    store = RedisStore.from_url(spawned_redis.url)
    await store.start()
    assert store.noeviction is True
    await store.aclose()
    with spawned_redis.client() as admin:
        admin.execute_command("ACL", "SETUSER", "app", "on", ">pw", "~*", "+@all", "-config")
    limited = RedisStore.from_url(f"redis://app:pw@127.0.0.1:{spawned_redis.port}/0")
    await limited.start()  # CONFIG GET refused: unknown, logged, no crash
    assert limited.noeviction is None
    await limited.aclose()


# ---- 4. an invalidation that never reached Redis, and a restart --------------------------------


async def test_a_pending_invalidation_is_retried_at_shutdown_and_other_processes_see_it(
    spawned_redis: RedisServer,
    environ: dict[str, str],
    http: httpx.AsyncClient,
    processes: list[AppProcess],
    namespace: str,
) -> None:
    async with TcpProxy(spawned_redis.port) as cut:
        writer = AppProcess(
            {
                **environ,
                "REDIS_URL": f"redis://127.0.0.1:{cut.port}/0",
                "CACHEGATE_RETRY_INTERVAL": "600",  # only the shutdown retry can land it
            }
        )
        reader = AppProcess({**environ, "REDIS_URL": spawned_redis.url})
        processes += [writer, reader]
        await writer.ready()
        await reader.ready()
        try:
            assert [(await read(http, reader.url))[0] for _ in range(2)] == ["miss", "hit"]
            cut.set_mode("blackhole")  # only the writer's path to Redis
            await write(http, writer.url, "written while cut off")
            assert await writer.metric("cachegate_invalidations_pending") == 1
            assert await writer.metric("cachegate_cache_invalidation_failures_total") == 1
            # The exposure the docs bound: another process still serves the old answer.
            path, notes = await read(http, reader.url)
            assert (path, "written while cut off" in notes) == ("hit", False)
            cut.set_mode("pass")
            assert await writer.stop() in CLEAN_STOP  # lifespan shutdown: retried once more
            path, notes = await read(http, reader.url)
            assert path == "miss" and "written while cut off" in notes
        finally:
            delete_namespace(spawned_redis.url, namespace)


# ---- 5. a write finished in a BackgroundTask ---------------------------------------------------


async def test_a_write_finished_in_a_background_task_leaves_no_stale_hit(
    spawned_redis: RedisServer,
    environ: dict[str, str],
    http: httpx.AsyncClient,
    processes: list[AppProcess],
) -> None:
    app = AppProcess({**environ, "REDIS_URL": spawned_redis.url})
    processes.append(app)
    await app.ready()
    assert [(await read(http, app.url))[0] for _ in range(2)] == ["miss", "hit"]
    await write(http, app.url, "indexed later", path="/notes/indexed")
    seen = []
    ended = time.monotonic() + INDEXING_DELAY * 4
    while time.monotonic() < ended:
        seen.append(await read(http, app.url))
        await anyio.sleep(0.02)
    landed = next(i for i, (_, notes) in enumerate(seen) if "indexed later" in notes)
    stale = [(path, notes) for path, notes in seen[landed:] if "indexed later" not in notes]
    assert stale == [], seen
    final = [await read(http, app.url) for _ in range(2)]
    assert all("indexed later" in notes for _, notes in final), final
    assert final[-1][0] == "hit"


# ---- 6. single-flight whatever the store does --------------------------------------------------


async def test_identical_misses_coalesce_while_redis_stalls(
    spawned_redis: RedisServer, namespace: str
) -> None:
    """Redis answers 0.5 s late (10x the 50 ms deadline): every lookup fails, yet 50 identical
    concurrent requests cost at most two fresh computations, all answered the same."""
    async with TcpProxy(spawned_redis.port) as stall:
        store = RedisStore.from_url(
            f"redis://127.0.0.1:{stall.port}/0", deadline=0.05, metrics=fresh_metrics()
        )
        store.breaker.failure_threshold = 1000  # the breaker is not what is tested here
        try:
            async with Harness(store=store, namespace=namespace) as h:
                h.service.delay = 0.1
                stall.set_mode("delay", 0.5)
                responses = await asyncio.gather(*(h.ask() for _ in range(50)))
        finally:
            stall.set_mode("pass")
            await store.aclose()
    assert all(r.status_code == 200 for r in responses)
    assert {r.headers["x-cachegate"] for r in responses} == {"bypass"}
    assert len({r.content for r in responses}) == 1
    assert h.service.calls["query"] <= 2
    assert h.bypassed("store_error") == 50


async def test_identical_misses_coalesce_on_a_cold_pool(
    spawned_redis: RedisServer, namespace: str
) -> None:
    # A deadline that lookups opening 50 connections at once meet on a loaded machine too: a
    # lookup that timed out after the store-less computation started would rightly queue
    # another one (it never predates its requests); stalls are the test above.
    store = RedisStore.from_url(spawned_redis.url, deadline=1.0, metrics=fresh_metrics())
    try:
        async with Harness(store=store, namespace=namespace) as h:
            h.service.delay = 0.1
            responses = await asyncio.gather(*(h.ask() for _ in range(50)))
    finally:
        await store.aclose()
    assert all(r.status_code == 200 for r in responses)
    assert h.service.calls["query"] <= 2


async def test_the_pool_opens_connections_ahead_of_the_first_request(
    spawned_redis: RedisServer,
) -> None:
    store = RedisStore.from_url(spawned_redis.url)
    with spawned_redis.client() as admin:
        before = len(admin.client_list())
        await store.start()  # what the middleware does at lifespan startup
        opened = len(admin.client_list()) - before
    await store.aclose()
    assert opened >= store.warm_connections
