"""Several uvicorn workers: any worker's `/metrics` reports the sum over all of them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import delete_namespace
from prometheus_client.parser import text_string_to_metric_families

from cachegate.tally import FLUSH_DELAY

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _sample(text: str, name: str, labels: dict[str, str]) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError(f"{name}{labels} not exposed")


def test_metrics_are_summed_over_workers(tmp_path: Path, redis_url: str, namespace: str) -> None:
    port = _free_port()
    environ = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        "REDIS_URL": redis_url,
        "CACHEGATE_TEST_NAMESPACE": namespace,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT / "src")]),
    }
    command = [
        sys.executable, "-m", "uvicorn", "--factory", "support.multiprocess_app:make_app",
        "--workers", "2", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    server = subprocess.Popen(command, env=environ, cwd=ROOT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url + "/metrics", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("uvicorn with two workers did not start")
                time.sleep(0.2)
        pids = set()
        with httpx.Client(base_url=url, timeout=5) as client:
            for _ in range(60):
                # A new connection each time, so both workers take requests.
                response = httpx.post(
                    url + "/ask", json={"q": "same"}, headers={"x-workspace-id": "w"}, timeout=5
                )
                assert response.status_code == 200
                pids.add(httpx.get(url + "/pid", timeout=5).json()["pid"])
            assert len(pids) == 2, "both workers should have answered"
            layer = {"cache_layer": "query_result"}
            counted = 0.0
            # each worker's counts reach its files at a scrape it answers, else within
            # FLUSH_DELAY of its last request: wait for them, then every scrape agrees
            deadline = time.monotonic() + 10 * FLUSH_DELAY
            while counted < 60 and time.monotonic() < deadline:
                text = client.get("/metrics", headers={"connection": "close"}).text
                counted = _sample(text, "cachegate_cache_hits_total", layer) + _sample(
                    text, "cachegate_cache_misses_total", layer
                )
                time.sleep(FLUSH_DELAY / 4)
            for _ in range(4):
                text = client.get("/metrics", headers={"connection": "close"}).text
                hits = _sample(text, "cachegate_cache_hits_total", layer)
                misses = _sample(text, "cachegate_cache_misses_total", layer)
                assert hits + misses == 60
                assert misses <= 2
    finally:
        server.terminate()
        server.wait(timeout=15)
        delete_namespace(redis_url, namespace)
