"""The demo (`cachegate.demo.app.create_app`): the README's flow — a query misses, then hits; a
session write for the client makes the next one a miss with a new answer — on both stores through
httpx.ASGITransport, and once through a real uvicorn server on a free port."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from support.stores import metrics_for

from cachegate import CacheGate
from cachegate.demo.app import create_app, policies, write_rules
from cachegate.store import MemoryStore, Store

pytestmark = pytest.mark.anyio

WORKSPACE = {"X-Workspace-ID": "ws-1"}
QUESTION = "How did the client sleep this week?"


def demo(store: Store, namespace: str) -> tuple[object, CollectorRegistry]:
    metrics = metrics_for(store)
    registry = metrics.registry
    assert registry is not None
    gate = CacheGate(
        policies=policies(),
        write_rules=write_rules(),
        store=store,
        namespace=namespace,
        metrics=metrics,
    )
    return create_app(gate, latency=0.01, registry=registry), registry


async def ask(
    client: httpx.AsyncClient, text: str = QUESTION, workspace: str = "ws-1", who: str = "c1"
) -> httpx.Response:
    response = await client.post(
        "/ai/query", json={"query": text, "client_id": who}, headers={"X-Workspace-ID": workspace}
    )
    assert response.status_code == 200, response.text
    return response


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"{name}{labels} is not exposed")


async def readme_flow(client: httpx.AsyncClient) -> None:
    first = await ask(client)
    assert first.headers["x-cachegate"] == "miss"
    second = await ask(client)
    assert second.headers["x-cachegate"] == "hit"
    assert second.json() == first.json()
    # LOOSE normalisation: the same question in other case and spacing is the same question
    assert (await ask(client, "  how did the CLIENT sleep   this week? ")).headers[
        "x-cachegate"
    ] == "hit"

    created = await client.post(
        "/sessions",
        json={"client_id": "c1", "notes": "Client reports they sleep badly this week."},
        headers=WORKSPACE,
    )
    assert created.status_code == 201
    after = await ask(client)
    assert after.headers["x-cachegate"] == "miss"
    assert after.json()["answer"] != first.json()["answer"]
    assert "sleep badly" in after.json()["answer"]
    assert (await ask(client)).headers["x-cachegate"] == "hit"

    other = await ask(client, workspace="ws-2")  # another workspace, same question
    assert other.headers["x-cachegate"] == "miss"
    assert "sleep badly" not in other.json()["answer"]

    session = created.json()["session_id"]
    changed = await client.put(
        f"/sessions/{session}", json={"notes": "Client now sleeps well."}, headers=WORKSPACE
    )
    assert changed.status_code == 200
    assert (await ask(client)).headers["x-cachegate"] == "miss"
    deleted = await client.delete(f"/sessions/{session}", headers=WORKSPACE)
    assert deleted.status_code == 200
    gone = await ask(client)
    assert gone.headers["x-cachegate"] == "miss"
    assert gone.json()["answer"].startswith("No session note")
    assert (await client.delete(f"/sessions/{session}", headers=WORKSPACE)).status_code == 404
    assert (await ask(client)).headers["x-cachegate"] == "hit"  # a 404 invalidates nothing

    exposed = (await client.get("/metrics")).text
    assert metric(exposed, "cachegate_cache_hits_total", cache_layer="query_result") == 4
    assert metric(exposed, "cachegate_cache_misses_total", cache_layer="query_result") == 5
    assert metric(exposed, "cachegate_cache_invalidations_total", reason="session_created") == 1
    assert metric(exposed, "cachegate_cache_invalidations_total", reason="session_changed") == 2


async def test_readme_flow_through_asgi(store: Store, namespace: str) -> None:
    app, _ = demo(store, namespace)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
        await readme_flow(client)


async def test_demo_bad_input_is_the_apps_answer_not_a_cache_error(namespace: str) -> None:
    app, registry = demo(MemoryStore(), namespace)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
        no_tenant = await client.post("/ai/query", json={"query": QUESTION})
        assert (no_tenant.status_code, no_tenant.headers["x-cachegate"]) == (401, "bypass")
        bad = await client.post("/ai/query", content=b"{nope", headers=WORKSPACE)
        assert (bad.status_code, bad.headers["x-cachegate"]) == (400, "bypass")
        deep = b'{"query": ' + b"[" * 600 + b"]" * 600 + b"}"
        nested = await client.post("/ai/query", content=deep, headers=WORKSPACE)
        assert (nested.status_code, nested.headers["x-cachegate"]) == (422, "bypass")
        empty = await client.post("/ai/query", json={"query": "  "}, headers=WORKSPACE)
        assert empty.status_code == 422
        assert empty.headers["x-cachegate"] == "miss"  # keyed, answered, never stored
    for reason in ("no_tenant", "invalid_json", "extractor_error"):
        assert registry.get_sample_value("cachegate_bypasses_total", {"reason": reason}) == 1
    assert (
        registry.get_sample_value("cachegate_uncacheable_responses_total", {"reason": "status"})
        == 1
    )


@pytest.fixture
async def served_demo(namespace: str) -> AsyncIterator[str]:
    """The demo under a real uvicorn server on a free loopback port (lifespan on)."""
    app, _ = demo(MemoryStore(), namespace)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, lifespan="on", log_level="warning")  # type: ignore[arg-type]
    )
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(500):
            if server.started or serving.done():
                break
            await asyncio.sleep(0.01)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
        sock.close()


@pytest.mark.slow
async def test_readme_flow_through_a_real_uvicorn_server(served_demo: str) -> None:
    async with httpx.AsyncClient(base_url=served_demo, timeout=10) as client:
        await readme_flow(client)
        # many concurrent identical questions over real sockets: one answer for all
        texts = await asyncio.gather(*(ask(client, "what about appetite?") for _ in range(5)))
        assert len({t.json()["answer"] for t in texts}) == 1
        assert {t.headers["x-cachegate"] for t in texts} <= {"miss", "hit"}
