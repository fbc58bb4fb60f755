"""`RedisStore.from_url` beyond `redis://`: an ACL user and password, TLS (`rediss://` with
`ssl_*` query parameters, certificates made here with `openssl`) and Sentinel
(`redis+sentinel://`), each against redis-server processes this module spawns on loopback."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import missing
from support.redis_server import RedisServer, free_port, redis_server_binary, running_redis

from cachegate.keys import CacheScope, KeySpace
from cachegate.store import RedisStore
from cachegate.store.base import StoreError
from cachegate.store.urls import SentinelURL, parse_sentinel_url

pytestmark = pytest.mark.anyio


# ---- parsing ----------------------------------------------------------------------------------


def test_sentinel_urls_parse() -> None:
    assert parse_sentinel_url("redis+sentinel://h1:26380,h2,[::1]:26381/mymaster/2") == (
        SentinelURL(
            sentinels=(("h1", 26380), ("h2", 26379), ("::1", 26381)), service="mymaster", db=2
        )
    )
    parsed = parse_sentinel_url(
        "redis+sentinel://cg:p%40ss%3Aw@h:1/svc?sentinel_username=s&sentinel_password=x"
    )
    assert (parsed.username, parsed.password, parsed.db) == ("cg", "p@ss:w", 0)
    assert (parsed.sentinel_username, parsed.sentinel_password) == ("s", "x")
    assert parse_sentinel_url("REDIS+SENTINEL://:only-pass@h/svc/").password == "only-pass"


@pytest.mark.parametrize(
    "url",
    [
        "redis://h:1/svc",
        "redis+sentinel://h:1",
        "redis+sentinel://h:1/",
        "redis+sentinel:///svc",
        "redis+sentinel://h:1/svc/0/extra",
        "redis+sentinel://h:1/svc/zero",
        "redis+sentinel://h:notaport/svc",
        "redis+sentinel://h:70000/svc",
        "redis+sentinel://[::1/svc",
        "redis+sentinel://h/svc?ssl=true",
    ],
)
def test_bad_sentinel_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        parse_sentinel_url(url)


def test_a_sentinel_url_cannot_be_a_cluster() -> None:
    with pytest.raises(ValueError):
        RedisStore.from_url("redis+sentinel://127.0.0.1:1/svc", cluster=True)


# ---- real servers -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def binary() -> str:
    found = redis_server_binary()
    if found is None:
        missing("redis-server")
    assert found is not None
    return found


@pytest.fixture
def server(binary: str) -> Iterator[RedisServer]:
    with running_redis(binary) as spawned:
        yield spawned


async def round_trip(store: RedisStore, namespace: str) -> None:
    """A write, a lookup with generations and a bump: the store really works."""
    space = KeySpace(namespace)
    scope = CacheScope("t1", "c1")
    key = space.entry_key(scope, route="/q", method="POST", material={"q": 1})
    generation_keys = space.generation_keys(scope)
    generations = await store.generations(generation_keys)
    await store.write(key, b"entry", 30)
    found = await store.lookup(key, generation_keys)
    assert (found.value, found.generations) == (b"entry", generations)


def retries_of(store: RedisStore) -> int:
    retry = store.client.get_retry()
    assert retry is not None
    return int(retry._retries)


async def test_acl_user_and_password(server: RedisServer, namespace: str) -> None:
    with server.client() as admin:
        admin.acl_setuser(
            "cg",
            enabled=True,
            passwords=["+s3cret/pw"],
            keys=[f"{namespace}:*"],
            commands=["+@all"],
        )
    url = f"redis://cg:s3cret%2Fpw@127.0.0.1:{server.port}/0"
    store = RedisStore.from_url(url, deadline=1.0)
    try:
        assert retries_of(store) == 0
        await round_trip(store, namespace)
        assert await store.client.acl_whoami() == "cg"
        with pytest.raises(StoreError):  # the ACL limits it to its namespace
            await store.write("elsewhere:k", b"v", 30)
    finally:
        await store.aclose()
    wrong = RedisStore.from_url(f"redis://cg:nope@127.0.0.1:{server.port}/0", deadline=1.0)
    try:
        with pytest.raises(StoreError):
            await round_trip(wrong, namespace)
    finally:
        await wrong.aclose()


# ---- TLS --------------------------------------------------------------------------------------


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def certificates() -> Iterator[Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, in a temp dir."""
    if shutil.which("openssl") is None:
        missing("openssl")
    directory = Path(tempfile.mkdtemp(prefix="cg-tls-"))
    try:
        openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=cg-ca",
            "-keyout", "ca.key", "-out", "ca.crt", cwd=directory,
        )  # fmt: skip
        (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        for name in ("server", "client"):
            openssl(
                "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=cg-{name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=directory,
            )  # fmt: skip
            openssl(
                "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", f"{name}.crt",
                cwd=directory,
            )  # fmt: skip
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def spawn(command: list[str], port: int, *, tls: Path | None = None) -> subprocess.Popen[bytes]:
    """Start a server process and wait until it answers PING on `port`."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            error = process.stderr.read().decode() if process.stderr else ""
            raise RuntimeError(f"{command[0]} exited: {error[-500:]}")
        options = {}
        if tls is not None:
            options = {
                "ssl": True,
                "ssl_ca_certs": str(tls / "ca.crt"),
                "ssl_certfile": str(tls / "client.crt"),
                "ssl_keyfile": str(tls / "client.key"),
            }
        try:
            with redis.Redis(port=port, socket_connect_timeout=1, socket_timeout=1, **options) as c:
                if c.ping():
                    return process
        except redis.RedisError:
            time.sleep(0.05)
    process.kill()
    process.wait()
    raise RuntimeError(f"{command[0]} on port {port} did not answer")


@pytest.fixture
def tls_server(binary: str, certificates: Path) -> Iterator[int]:
    """A redis-server answering only TLS, requiring client certificates; yields its port."""
    port = free_port()
    directory = tempfile.mkdtemp(prefix="cg-tls-redis-")
    command = [
        binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
        "--tls-cert-file", str(certificates / "server.crt"),
        "--tls-key-file", str(certificates / "server.key"),
        "--tls-ca-cert-file", str(certificates / "ca.crt"),
        "--tls-auth-clients", "yes",
        "--save", "", "--appendonly", "no", "--dir", directory,
    ]  # fmt: skip
    try:
        process = spawn(command, port, tls=certificates)
    except RuntimeError as error:
        shutil.rmtree(directory, ignore_errors=True)
        if "tls" in str(error).lower():
            missing(f"redis-server built with TLS ({error})")
        raise
    try:
        yield port
    finally:
        process.kill()
        process.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


async def test_tls_with_a_ca_and_a_client_certificate(
    tls_server: int, certificates: Path, namespace: str
) -> None:
    base = f"rediss://127.0.0.1:{tls_server}/0?ssl_ca_certs={certificates / 'ca.crt'}"
    client_cert = f"&ssl_certfile={certificates / 'client.crt'}"
    client_cert += f"&ssl_keyfile={certificates / 'client.key'}"
    store = RedisStore.from_url(base + client_cert, deadline=1.0)
    try:
        assert retries_of(store) == 0
        await round_trip(store, namespace)
    finally:
        await store.aclose()
    for refused in (
        base,  # no client certificate: the server requires one
        f"rediss://127.0.0.1:{tls_server}/0?{client_cert[1:]}",  # server not trusted
        f"redis://127.0.0.1:{tls_server}/0",  # plain text to a TLS port
    ):
        store = RedisStore.from_url(refused, deadline=1.0)
        try:
            with pytest.raises(StoreError):
                await round_trip(store, namespace)
        finally:
            await store.aclose()


# ---- Sentinel ---------------------------------------------------------------------------------


@pytest.fixture
def sentinel_port(binary: str, server: RedisServer) -> Iterator[int]:
    """A sentinel monitoring `server` as `cgmaster`; yields the sentinel's port."""
    directory = Path(tempfile.mkdtemp(prefix="cg-sentinel-"))
    port = free_port()
    config = directory / "sentinel.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
        f"sentinel monitor cgmaster 127.0.0.1 {server.port} 1\n"
    )
    process = spawn([binary, str(config), "--sentinel"], port)
    try:
        deadline = time.monotonic() + 10
        with redis.Redis(port=port, socket_timeout=1) as sentinel:
            while sentinel.sentinel_get_master_addr_by_name("cgmaster") is None:
                assert time.monotonic() < deadline, "the sentinel never knew its master"
                time.sleep(0.05)
        yield port
    finally:
        process.kill()
        process.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


async def test_sentinel_finds_the_master(
    server: RedisServer, sentinel_port: int, namespace: str
) -> None:
    with server.client() as admin:
        admin.acl_setuser("cg", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all"])
    dead = free_port()  # a sentinel that is down is skipped
    url = f"redis+sentinel://cg:pw@127.0.0.1:{dead},127.0.0.1:{sentinel_port}/cgmaster/3"
    store = RedisStore.from_url(url, deadline=1.0)
    try:
        assert retries_of(store) == 0
        await round_trip(store, namespace)
        assert await store.client.acl_whoami() == "cg"
    finally:
        await store.aclose()
    with redis.Redis(port=server.port, db=3) as master:
        assert len(master.keys(f"{namespace}:*")) == 3  # the entry and two generations, db 3
