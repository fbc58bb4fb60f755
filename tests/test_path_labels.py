"""One event, one label (issue 16, items 6 and 7): a single-flight waiter is not a hit in the
latency histogram, and a failed store lookup is a `store_error` bypass in both layers."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest
from prometheus_client import CollectorRegistry
from support.apps import Harness
from test_invalidation import ObservedFlights, until

from cachegate.demo.service import DemoConfig, build_demo
from cachegate.demo.workload import QUESTIONS, Catalog

pytestmark = pytest.mark.anyio


async def test_a_shared_result_has_its_own_path_label_not_hit() -> None:
    async with Harness() as h:
        flights = h.gate.flights = ObservedFlights()
        entered, release = h.service.hold("all")
        tasks = [asyncio.create_task(h.ask(headers={"X-Hold": "all"})) for _ in range(4)]
        await entered.wait()
        await until(lambda: flights.waiting == 3)
        release.set()
        await asyncio.gather(*tasks)
        count = "cachegate_query_duration_seconds_count"
        assert h.sample(count, route="/ai/query", path="shared") == 3
        assert h.sample(count, route="/ai/query", path="miss") == 1
        assert h.sample(count, route="/ai/query", path="hit") == 0
        await h.ask()
        assert h.sample(count, route="/ai/query", path="hit") == 1


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_a_store_outage_is_a_store_error_bypass_in_both_layers() -> None:
    registry = CollectorRegistry()
    demo = build_demo(
        DemoConfig(
            stage="l1-100",
            latency=0.0,
            embed_latency=0.0,
            noise_sample_rate=0.0,
            catalog=Catalog(workspaces=2, clients=1, notes_per_client=1),
        ),
        environ={"REDIS_URL": f"redis://127.0.0.1:{closed_port()}"},
        registry=registry,
    )
    transport = httpx.ASGITransport(app=demo.app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
            for _ in range(3):
                answer = await client.post(
                    "/ai/query",
                    json={"query": QUESTIONS[0], "client_id": "client-01"},
                    headers={"X-Workspace-ID": "ws-001"},
                )
                assert answer.status_code == 200
                assert answer.headers["x-cachegate"] == "bypass"

        def sample(name: str, **labels: str) -> float:
            return registry.get_sample_value(name, labels) or 0.0

        for layer in ("query_result", "embedding"):
            assert sample("cachegate_cache_misses_total", cache_layer=layer) == 0, layer
            assert sample("cachegate_cache_hits_total", cache_layer=layer) == 0, layer
        assert sample("cachegate_bypasses_total", reason="store_error") == 6
        assert demo.embedder.stats.misses == 0
    finally:
        await demo.gate.aclose()
