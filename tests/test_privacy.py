"""Privacy, captured and searched: no query, answer or note text, tenant or client id in Redis
keys, metric labels, span names or attributes, or log records; credentials never stored.

The demo service (L1 and L2, serve with verification and shadow, session writes) runs on a
`redis-server` this module spawns, with every command it receives read through `MONITOR`, spans
in an in-memory exporter, every log record at DEBUG, and the Prometheus exposition. With
encryption at rest on, nothing sent to Redis contains any of it, values included.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from support.components import missing
from support.redis_server import RedisServer, redis_server_binary, running_redis
from support.spans import recording_spans

from cachegate import CacheGate, Decision, Limits, Metrics, Mode
from cachegate.demo.app import create_app, policies, write_rules
from cachegate.store import RedisStore, Store
from cachegate.store.encrypted import EncryptedStore

pytestmark = pytest.mark.anyio

AUTHORIZATION = "Bearer sk-live-7Hq2privacy-token-Zx9"
COOKIE_VALUE = "sid=cookie-secret-Pq4w8Lm2"
_EXPORTER = recording_spans()


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    binary = redis_server_binary()
    if binary is None:
        missing("redis-server")
    with running_redis(binary) as spawned:
        yield spawned


class Monitor:
    """Every command the server receives, as `MONITOR` prints it, read in a thread."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(b"MONITOR\r\n")
        self.sentinel = f"monitor-end-{uuid.uuid4().hex}".encode()
        self.data = bytearray()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while self.sentinel not in self.data:
            chunk = self.sock.recv(65536)
            if not chunk:
                return
            self.data += chunk

    def stop(self, server: RedisServer) -> str:
        """Everything received until now (an ECHO of a sentinel marks the end)."""
        client = server.client()
        try:
            client.echo(self.sentinel)
        finally:
            client.close()
        self._thread.join(timeout=10)
        self.sock.close()
        assert self.sentinel in self.data, "MONITOR did not see the end"
        return self.data.decode("utf-8", "backslashreplace")


_ARGUMENT = re.compile(r'"((?:[^"\\]|\\.)*)"')


def command_keys(monitor_text: str) -> list[str]:
    """The key arguments of each command (SET: its key; other commands: every argument)."""
    keys = []
    for line in monitor_text.splitlines():
        arguments = _ARGUMENT.findall(line)
        if not arguments:
            continue
        command, rest = arguments[0].upper(), arguments[1:]
        keys += rest[:1] if command == "SET" else rest
    return keys


class Logs(logging.Handler):
    """Every record at DEBUG and above, formatted with its exception."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record) + repr(record.args))


@pytest.fixture
def logs() -> Iterator[Logs]:
    handler = Logs()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


class ByTenant:
    """One tenant served with background verification, one in shadow (dark launch)."""

    def __init__(self, serve: str, shadow: str) -> None:
        self.decisions = {
            serve: Decision(l1=Mode.SERVE, l2=Mode.SERVE, verify=True),
            shadow: Decision(l1=Mode.SHADOW, l2=Mode.SHADOW),
        }

    def decide(self, tenant: str | None) -> Decision:
        return self.decisions.get(tenant or "", Decision())


@dataclass
class Workload:
    """The private data one run sends, and the answers it got back."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    answers: list[str] = field(default_factory=list)
    cache_headers: list[str] = field(default_factory=list)

    @property
    def tenants(self) -> list[str]:
        return [f"ws-serve-{self.tag}", f"ws-shadow-{self.tag}"]

    @property
    def clients(self) -> list[str]:
        return [f"client-Okonkwo-{self.tag}", f"client-Lindqvist-{self.tag}"]

    def notes(self, tenant: str, client: str) -> list[str]:
        return [
            f"Session with {client} of {tenant}: reported insomnia and panic attacks at work",
            f"Follow-up for {client}: nightmares about the accident decreased after EMDR",
        ]

    def queries(self, client: str) -> list[str]:
        return [
            f"What did {client} say about sleep problems",
            f"Summarise the trauma history discussed with {client}",
        ]

    def secrets(self) -> list[str]:
        found = [*self.tenants, *self.clients, AUTHORIZATION, COOKIE_VALUE, "sk-live", "Pq4w8"]
        for tenant in self.tenants:
            for client in self.clients:
                found += self.notes(tenant, client) + self.queries(client)
        found += self.answers
        found += ["insomnia", "nightmares", "sleep problems", "trauma history"]
        return found


def _headers(tenant: str) -> dict[str, str]:
    return {
        "X-Workspace-ID": tenant,
        "Authorization": AUTHORIZATION,
        "Cookie": COOKIE_VALUE,
    }


async def _run(
    store: Store, namespace: str, workload: Workload, registry: CollectorRegistry
) -> CacheGate:
    serve, shadow = workload.tenants
    gate = CacheGate(
        policies=policies(),
        write_rules=write_rules(),
        store=store,
        rollout=ByTenant(serve, shadow),
        namespace=namespace,
        limits=Limits(noise_sample_rate=1.0),
    )
    app = create_app(gate, latency=0.0, registry=registry)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as http:

        async def ask(tenant: str, body: dict[str, str]) -> None:
            response = await http.post("/ai/query", json=body, headers=_headers(tenant))
            assert response.status_code == 200, response.text
            workload.answers.append(response.json()["answer"])
            workload.cache_headers.append(response.headers["x-cachegate"])

        for tenant in workload.tenants:
            for client in workload.clients:
                session_ids = []
                for note in workload.notes(tenant, client):
                    created = await http.post(
                        "/sessions",
                        json={"client_id": client, "notes": note},
                        headers=_headers(tenant),
                    )
                    assert created.status_code == 201
                    session_ids.append(created.json()["session_id"])
                for query in workload.queries(client):
                    for _ in range(2):
                        await ask(tenant, {"query": query, "client_id": client})
                    await gate.drain()
                changed = await http.put(
                    f"/sessions/{session_ids[0]}",
                    json={"notes": workload.notes(tenant, client)[0] + " and insomnia again"},
                    headers=_headers(tenant),
                )
                assert changed.status_code == 200
                await ask(tenant, {"query": workload.queries(client)[0], "client_id": client})
                await ask(tenant, {"query": workload.queries(client)[0]})  # tenant-wide
                deleted = await http.delete(f"/sessions/{session_ids[1]}", headers=_headers(tenant))
                assert deleted.status_code == 200
            await gate.drain()
    return gate


def _span_text(spans: tuple[ReadableSpan, ...]) -> str:
    parts = []
    for span in spans:
        parts += [span.name, repr(dict(span.attributes or {}))]
        parts += [repr((event.name, dict(event.attributes or {}))) for event in span.events]
    return "\n".join(parts)


def _leaks(secrets: list[str], where: dict[str, str]) -> list[tuple[str, str]]:
    return [(secret, name) for secret in secrets for name, text in where.items() if secret in text]


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
async def test_no_private_data_in_keys_metrics_spans_or_logs(
    server: RedisServer, logs: Logs, encrypted: bool
) -> None:
    namespace = f"cgpriv{uuid.uuid4().hex[:8]}"
    workload = Workload()
    registry = CollectorRegistry()
    redis_store = RedisStore.from_url(server.url, deadline=1.0, metrics=Metrics(registry=registry))
    store: Store = (
        EncryptedStore(redis_store, {"k1": bytes(range(32))}, "k1", digest_secret=b"d" * 32)
        if encrypted
        else redis_store
    )
    _EXPORTER.clear()
    monitor = Monitor(server.port)
    gate = await _run(store, namespace, workload, registry)
    await gate.aclose()
    commands = monitor.stop(server)

    # the workload did what it claims: hits, shadow comparisons, verification, L2, writes
    assert {"miss", "hit", "shadow-miss", "shadow-hit"} <= set(workload.cache_headers)
    exposition = generate_latest(registry).decode()
    for sample in (
        'cachegate_comparisons_total{cache_layer="query_result",kind="verify",outcome="match"}',
        'cachegate_comparisons_total{cache_layer="query_result",kind="shadow",outcome="match"}',
        'cachegate_cache_hits_total{cache_layer="embedding"}',
        'cachegate_cache_invalidations_total{reason="session_changed"}',
    ):
        value = float(exposition.split(sample + " ", 1)[1].split()[0])
        assert value >= 1, sample
    spans = _EXPORTER.get_finished_spans()
    assert {"cachegate.lookup", "cachegate.compare", "cachegate.invalidate"} <= {
        span.name for span in spans
    }
    assert len(logs.records) > 0  # the capture works (httpx logs each request at DEBUG)

    client = server.client()
    try:
        stored_keys = [key.decode() for key in client.scan_iter(match=f"{namespace}:*")]
        stored_values = [client.get(key) or b"" for key in stored_keys]
    finally:
        client.close()
    written = command_keys(commands)
    assert any(":r:" in key for key in stored_keys) and any(":v:" in key for key in stored_keys)
    assert any(key.startswith(namespace) for key in written)

    surfaces = {
        "redis keys (SCAN)": "\n".join(stored_keys),
        "redis keys (MONITOR)": "\n".join(written),
        "metrics": exposition + generate_latest(REGISTRY).decode(),
        "spans": _span_text(spans),
        "logs": "\n".join(logs.records),
    }
    if encrypted:
        surfaces["every command and value (MONITOR)"] = commands
        surfaces["stored values"] = repr(stored_values)
    secrets = workload.secrets()
    assert _leaks(secrets, surfaces) == []
    # credentials are never stored, encrypted or not
    credentials = [AUTHORIZATION, COOKIE_VALUE, "sk-live", "Pq4w8", "cookie-secret"]
    raw = {"MONITOR": commands, "stored values": repr(stored_values)}
    assert _leaks(credentials, raw) == []
    if not encrypted:  # the check can fail: plain values do carry the answers
        assert any(workload.answers[0].encode()[:40] in value for value in stored_values)


async def test_request_and_entry_size_caps(server: RedisServer) -> None:
    namespace = f"cgpriv{uuid.uuid4().hex[:8]}"
    registry = CollectorRegistry()
    store = RedisStore.from_url(
        server.url, deadline=1.0, metrics=Metrics(registry=CollectorRegistry())
    )
    tenant = f"ws-caps-{uuid.uuid4().hex[:6]}"

    def gate(**limits: int) -> CacheGate:
        """A gate over `store`, counting into its metrics (the two runs count different
        series, so sharing them changes no assertion)."""
        return CacheGate(
            policies=policies(), store=store, namespace=namespace, limits=Limits(**limits)
        )

    small_body = gate(max_body_bytes=512, max_header_bytes=1024)
    app = create_app(small_body, latency=0.0, registry=registry)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as http:
        body = {"query": "x" * 600, "client_id": "c"}
        for _ in range(2):
            response = await http.post("/ai/query", json=body, headers=_headers(tenant))
            assert response.status_code == 200  # the app still gets the whole body
            assert response.headers["x-cachegate"] == "bypass"
        big_headers = {**_headers(tenant), "X-Padding": "p" * 2000}
        response = await http.post(
            "/ai/query", json={"query": "q", "client_id": "c"}, headers=big_headers
        )
        assert response.status_code == 200 and response.headers["x-cachegate"] == "bypass"
        ok = await http.post(
            "/ai/query", json={"query": "q", "client_id": "c"}, headers=_headers(tenant)
        )
        assert ok.headers["x-cachegate"] == "miss"
    small_body.metrics.tallies.flush()  # the request path's counts, as a scrape would see them
    bypasses = {
        reason: small_body.metrics.bypasses.labels(reason)._value.get()
        for reason in ("body_too_large", "headers_too_large")
    }
    assert bypasses == {"body_too_large": 2, "headers_too_large": 1}

    small_entry = gate(max_entry_bytes=64)
    app = create_app(small_entry, latency=0.0, registry=CollectorRegistry())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as http:
        body = {"query": "a question with a long answer", "client_id": "c2"}
        for _ in range(2):
            response = await http.post("/ai/query", json=body, headers=_headers(tenant))
            assert response.status_code == 200 and response.headers["x-cachegate"] == "miss"
    small_entry.metrics.tallies.flush()
    assert small_entry.metrics.uncacheable.labels("too_large")._value.get() == 2

    client = server.client()
    try:
        entries = list(client.scan_iter(match=f"{namespace}:*:r:*"))
        assert len(entries) == 1  # only the small answer of the first gate
        assert all(
            len(client.get(key) or b"") <= 1024 * 1024
            and b"sk-live" not in (client.get(key) or b"")
            for key in entries
        )
    finally:
        client.close()
    await small_body.drain()
    await small_entry.drain()
    await store.aclose()
