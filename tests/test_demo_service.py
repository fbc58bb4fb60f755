"""The demo service: RAG over seeded notes through the L2 embedder, the stage switch, the
real parts when configured, and `make run`'s command line."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from conftest import delete_namespace
from prometheus_client import CollectorRegistry
from starlette.testclient import TestClient
from support.cohere_server import CohereServer

from cachegate import CacheGate, StaticRollout
from cachegate.demo.app import Notes, create_app, policies, write_rules
from cachegate.demo.embedder import LocalEmbedder, hashed_vector
from cachegate.demo.replay import Samples
from cachegate.demo.service import Demo, DemoConfig, build_demo
from cachegate.demo.workload import QUESTIONS, Catalog
from cachegate.metrics import Metrics

pytestmark = pytest.mark.anyio

FAST = {"latency": 0.0, "embed_latency": 0.0, "noise_sample_rate": 0.0}
SMALL = Catalog(workspaces=3, clients=2, notes_per_client=3)
QUESTION = QUESTIONS[0]


def demo(stage: str, environ: dict[str, str] | None = None, **config: object) -> Demo:
    options: dict[str, object] = {"stage": stage, "catalog": SMALL, **FAST, **config}
    return build_demo(
        DemoConfig(**options),  # type: ignore[arg-type]
        environ=environ or {},
        registry=CollectorRegistry(),
    )


@pytest.fixture
async def l2_demo() -> AsyncIterator[tuple[Demo, httpx.AsyncClient]]:
    service = demo("l2")
    transport = httpx.ASGITransport(app=service.app, client=("127.0.0.1", 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
        yield service, client
    await service.gate.aclose()


async def ask(
    client: httpx.AsyncClient,
    text: str = QUESTION,
    workspace: str = "ws-001",
    who: str = "client-01",
) -> httpx.Response:
    response = await client.post(
        "/ai/query", json={"query": text, "client_id": who}, headers={"X-Workspace-ID": workspace}
    )
    assert response.status_code == 200, response.text
    return response


async def scrape(client: httpx.AsyncClient) -> Samples:
    return Samples.parse((await client.get("/metrics")).text)


async def test_query_embeds_through_the_l2_cache(
    l2_demo: tuple[Demo, httpx.AsyncClient],
) -> None:
    service, client = l2_demo
    before = await scrape(client)
    await ask(client)
    await ask(client)
    await ask(client, who="client-02")
    await ask(client, workspace="ws-002")
    delta = await scrape(client) - before
    assert delta.total("cachegate_cache_hits_total", cache_layer="embedding") == 2
    assert delta.total("cachegate_cache_misses_total", cache_layer="embedding") == 2
    assert delta.total("cachegate_demo_embed_calls_total", input_type="search_query") == 2
    assert delta.total("cachegate_fresh_calls_avoided_total", cache_layer="embedding") == 2
    assert service.embedder.stats.hits == 2


async def test_answers_come_from_the_clients_own_most_similar_notes() -> None:
    notes = Notes()
    notes.add("w1", "a", "S: Client sleeping five hours a night, waking early. P: sleep plan.")
    notes.add("w1", "a", "S: Client reports arguments with a sibling. P: communication skills.")
    notes.add("w1", "b", "S: Client sleeping badly, nightmares. P: sleep diary.")
    gate = CacheGate(policies=policies(), write_rules=write_rules(), metrics=metrics())
    app = create_app(gate, latency=0.0, registry=CollectorRegistry(), notes=notes)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
        body = (await ask(client, "How is the client sleeping?", "w1", "a")).json()
        nobody = (await ask(client, "How is the client sleeping?", "w2", "a")).json()
    assert "five hours" in body["answer"]
    assert "nightmares" not in body["answer"]
    assert nobody["answer"].startswith("No session note")
    await gate.aclose()


def metrics() -> Metrics:
    return Metrics(registry=CollectorRegistry())


async def test_case_and_spacing_do_not_change_a_fresh_answer() -> None:
    service = demo("off")
    transport = httpx.ASGITransport(app=service.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
        plain = await ask(client, QUESTION)
        variant = await ask(client, "  " + QUESTION.upper().replace(" ", "   ") + " ")
    assert plain.headers["x-cachegate"] == variant.headers["x-cachegate"] == "bypass"
    assert plain.json()["answer"] == variant.json()["answer"]
    await service.gate.aclose()


async def test_session_writes_invalidate_the_clients_answers() -> None:
    service = demo("l1-100")
    transport = httpx.ASGITransport(app=service.app)
    headers = {"X-Workspace-ID": "ws-001"}
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
        assert (await ask(client)).headers["x-cachegate"] == "miss"
        assert (await ask(client)).headers["x-cachegate"] == "hit"
        created = await client.post(
            "/sessions",
            json={"client_id": "client-01", "notes": "S: Client sleeping well now."},
            headers=headers,
        )
        assert created.status_code == 201
        fresh = await ask(client)
        assert fresh.headers["x-cachegate"] == "miss"
        assert "sleeping well" in fresh.json()["answer"]
        assert (await ask(client, who="client-02")).headers["x-cachegate"] == "miss"
        assert (await ask(client, who="client-02")).headers["x-cachegate"] == "hit"
        session = created.json()["session_id"]
        changed = await client.put(
            f"/sessions/{session}", json={"notes": "S: Client sleeping badly."}, headers=headers
        )
        assert changed.status_code == 200
        assert (await ask(client)).headers["x-cachegate"] == "miss"
        assert (await ask(client, who="client-02")).headers["x-cachegate"] == "hit"
    await service.gate.aclose()


async def test_stage_switch_is_demo_only_and_loopback_only(
    l2_demo: tuple[Demo, httpx.AsyncClient],
) -> None:
    service, client = l2_demo
    assert (await client.get("/_demo/stage")).json()["stage"] == "l2"
    assert (await ask(client)).headers["x-cachegate"] == "shadow-miss"
    switched = await client.post("/_demo/stage", json={"stage": "l1-100"})
    assert switched.status_code == 200
    assert switched.json()["stage"] == service.stages.stage == "l1-100"
    assert (await ask(client)).headers["x-cachegate"] == "hit"
    unknown = await client.post("/_demo/stage", json={"stage": "l1-200"})
    assert unknown.status_code == 422
    assert "dark-launch" in unknown.json()["error"]
    assert "l1-50" in unknown.json()["stages"]
    assert (await client.post("/_demo/stage", json={"name": "l2"})).status_code == 422
    assert (await client.post("/_demo/drain")).json() == {"drained": True}

    outside = httpx.ASGITransport(app=service.app, client=("10.1.2.3", 5000))
    async with httpx.AsyncClient(transport=outside, base_url="http://demo") as remote:
        assert (await remote.post("/_demo/stage", json={"stage": "off"})).status_code == 403
        assert (await remote.post("/_demo/drain")).status_code == 403
    assert service.stages.stage == "l1-100"


async def test_connected_unleash_bootstraps_and_refuses_the_stage_switch() -> None:
    environ = {"UNLEASH_URL": "http://127.0.0.1:9/api", "UNLEASH_API_TOKEN": "client-token"}
    service = demo("dark-launch", environ)
    assert service.stages.connected
    assert "Unleash" in service.parts["flags"]
    transport = httpx.ASGITransport(app=service.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
        assert (await ask(client)).headers["x-cachegate"] == "shadow-miss"
        refused = await client.post("/_demo/stage", json={"stage": "l1-100"})
        assert refused.status_code == 409
        assert "flags apply" in refused.json()["error"]
    await service.gate.aclose()
    await service.stages.aclose()


def test_an_incomplete_unleash_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="UNLEASH_API_TOKEN"):
        demo("l2", {"UNLEASH_URL": "http://127.0.0.1:9/api"})


def test_notes_are_indexed_at_startup_and_when_written_never_per_query() -> None:
    service = demo("off", catalog=Catalog(workspaces=10, clients=4, notes_per_client=3))
    headers = {"X-Workspace-ID": "ws-001"}

    def documents(client: TestClient) -> float:
        samples = Samples.parse(client.get("/metrics").text)
        return samples.total("cachegate_demo_embed_calls_total", input_type="search_document")

    def query(client: TestClient) -> None:
        body = {"query": "q", "client_id": "client-01"}
        assert client.post("/ai/query", json=body, headers=headers).status_code == 200

    with TestClient(service.app) as client:
        assert documents(client) == 2  # 120 notes: batches of at most 96
        query(client)
        assert documents(client) == 2
        body = {"client_id": "client-01", "notes": "S: new note."}
        created = client.post("/sessions", json=body, headers=headers).json()["session_id"]
        assert documents(client) == 3
        client.put(f"/sessions/{created}", json={"notes": "S: changed."}, headers=headers)
        assert documents(client) == 4
        query(client)
        assert documents(client) == 4


def test_the_original_create_app_signature_still_works() -> None:
    gate = CacheGate(policies=policies(), write_rules=write_rules(), rollout=StaticRollout())
    for _ in range(2):
        app = create_app(gate, latency=0.0, notes=Notes())
        with TestClient(app) as client:
            response = client.post(
                "/ai/query", json={"query": "q", "client_id": "c"}, headers={"X-Workspace-ID": "w"}
            )
            assert response.status_code == 200
            assert response.json()["answer"].startswith("No session note")


async def test_redis_store_when_redis_url_is_set(redis_url: str, namespace: str) -> None:
    service = demo("l1-100", {"REDIS_URL": redis_url}, namespace=namespace)
    assert service.parts["store"].startswith("Redis")
    try:
        transport = httpx.ASGITransport(app=service.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
            assert (await ask(client)).headers["x-cachegate"] == "miss"
            assert (await ask(client)).headers["x-cachegate"] == "hit"
    finally:
        await service.gate.aclose()
        delete_namespace(redis_url, namespace)


@pytest.fixture(scope="module")
def cohere() -> Iterator[CohereServer]:
    with CohereServer(default_dimension=32) as server:
        yield server


async def test_cohere_when_co_api_key_is_set(cohere: CohereServer) -> None:
    environ = {"CO_API_KEY": "test", "CO_API_URL": cohere.url}
    service = demo("l2", environ)
    assert service.parts["embeddings"].startswith("Cohere")
    transport = httpx.ASGITransport(app=service.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
        await ask(client)
        await ask(client)
    kinds = [call.input_type for call in cohere.ok_calls]
    assert kinds == ["search_document", "search_query"]
    assert service.embedder.stats.hits == 1
    await service.gate.aclose()


def test_local_embedder_is_deterministic_and_blind_to_case_and_spacing() -> None:
    assert hashed_vector("How  is the CLIENT?", 64) == hashed_vector("how is the client?", 64)
    assert hashed_vector("sleep", 64) != hashed_vector("anxiety", 64)
    assert hashed_vector("", 8) == [0.0] * 8
    with pytest.raises(ValueError):
        LocalEmbedder(latency=-1)


# --- `make run`'s command line ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cachegate_command() -> list[str]:
    script = Path(sys.executable).with_name("cachegate")
    return [str(script)] if script.exists() else [sys.executable, "-m", "cachegate.cli"]


def test_make_run_command_line_starts_and_answers() -> None:
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"REDIS_URL", "UNLEASH_URL", "CO_API_KEY", "CACHEGATE_STAGE"}
    }
    command = [*cachegate_command(), "serve", "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, "cachegate serve exited early"
            try:
                if httpx.get(f"{base}/metrics", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "cachegate serve did not answer within 30 s"
            time.sleep(0.1)
        request = {
            "json": {"query": QUESTION, "client_id": "client-01"},
            "headers": {"X-Workspace-ID": "ws-001"},
            "timeout": 10,
        }
        started = time.perf_counter()
        first = httpx.post(f"{base}/ai/query", **request)  # type: ignore[arg-type]
        fresh = time.perf_counter() - started
        started = time.perf_counter()
        second = httpx.post(f"{base}/ai/query", **request)  # type: ignore[arg-type]
        cached = time.perf_counter() - started
        assert (first.status_code, second.status_code) == (200, 200)
        assert [first.headers["x-cachegate"], second.headers["x-cachegate"]] == ["miss", "hit"]
        assert first.json() == second.json()
        assert fresh > 1.5 > 0.5 > cached
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=15)
    assert process.returncode == 0
    assert "stage l1-100" in output
    assert "ws-001" not in output and QUESTION not in output


def test_lifespan_starts_and_stops_unleash_without_blocking() -> None:
    environ = {"UNLEASH_URL": "http://127.0.0.1:9/api", "UNLEASH_API_TOKEN": "client-token"}
    service = demo("l1-100", environ)
    started = time.perf_counter()
    with TestClient(service.app) as client:
        body = {"query": QUESTION, "client_id": "client-01"}
        headers = {"X-Workspace-ID": "ws-001"}
        paths = [client.post("/ai/query", json=body, headers=headers) for _ in range(2)]
        assert [r.headers["x-cachegate"] for r in paths] == ["miss", "hit"]
    assert time.perf_counter() - started < 10
