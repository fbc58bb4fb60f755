"""The README works as written: every Python block runs, in order, as one program, and the
quickstarts behave as the README says (hits, misses, tenants kept apart, auth never skipped)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.cohere_server import CohereServer

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
STARLETTE, FASTAPI, INVALIDATE = 0, 1, 2

pytestmark = pytest.mark.anyio


def _app(index: int) -> Any:
    namespace: dict[str, Any] = {}
    exec(compile(BLOCKS[index], "README.md", "exec"), namespace)
    return namespace["app"], namespace["gate"]


def test_the_blocks_are_the_ones_these_tests_drive() -> None:
    assert "AuthenticationMiddleware" in BLOCKS[STARLETTE]
    assert "Depends(workspace)" in BLOCKS[FASTAPI]
    assert "gate.invalidate(" in BLOCKS[INVALIDATE]


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_starlette_quickstart_hits_misses_isolates_tenants_and_keeps_auth() -> None:
    app, gate = _app(STARLETTE)
    transport = httpx.ASGITransport(app=app)
    body = {"query": "How did the last session go?", "client_id": "c1"}
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
        first = await client.post("/ai/query", json=body, headers=bearer("token-1"))
        second = await client.post("/ai/query", json=body, headers=bearer("token-1"))
        other = await client.post("/ai/query", json=body, headers=bearer("token-2"))
        anonymous = await client.post("/ai/query", json=body)
        write = await client.post("/sessions", json={"client_id": "c1"}, headers=bearer("token-1"))
        after = await client.post("/ai/query", json=body, headers=bearer("token-1"))
    outcomes = [r.headers["x-cachegate"] for r in (first, second, other, anonymous, after)]
    assert outcomes == ["miss", "hit", "miss", "bypass", "miss"]
    assert first.json() == second.json()
    assert anonymous.status_code == 401
    assert write.status_code == 201
    await gate.aclose()


async def test_fastapi_quickstart_keeps_its_depends_auth_and_reads_ids_as_pydantic_does() -> None:
    app, gate = _app(FASTAPI)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:

        async def ask(token: str | None, client_id: object = 7) -> httpx.Response:
            headers = bearer(token) if token else {}
            return await client.post(
                "/ai/query", json={"query": "sleep?", "client_id": client_id}, headers=headers
            )

        first, second, padded = (
            await ask("token-1"),
            await ask("token-1"),
            await ask("token-1", "07"),
        )
        other, anonymous, forged = await ask("token-2"), await ask(None), await ask("forged")
    outcomes = [r.headers["x-cachegate"] for r in (first, second, padded, other)]
    assert outcomes == ["miss", "hit", "hit", "miss"]
    assert "workspace-2" in other.json()["answer"]
    for refused in (anonymous, forged):
        assert (refused.status_code, refused.headers["x-cachegate"]) == (403, "bypass")
    await gate.aclose()


async def test_invalidate_snippet_runs() -> None:
    namespace: dict[str, Any] = {}
    exec(BLOCKS[STARLETTE], namespace)
    exec(BLOCKS[INVALIDATE], namespace)
    gate = namespace["gate"]
    counter = gate.metrics.invalidations.labels("import")
    before = counter._value.get()
    await namespace["after_import"]()
    assert counter._value.get() == before + 2
    assert gate.invalidator.pending_count == 0
    await gate.aclose()


@pytest.fixture(scope="module")
def cohere_server() -> Iterator[CohereServer]:
    with CohereServer(default_dimension=16) as server:
        yield server


DRIVER = """
import asyncio, json, sys
from prometheus_client import generate_latest
for index, block in enumerate(json.loads(sys.stdin.read())):
    exec(compile(block, f"README.md block {index}", "exec"), globals())
vectors = [asyncio.run(embed_questions(["sleep", "sleep"], "workspace-1")) for _ in range(2)]
assert vectors[0] == vectors[1] and len(vectors[0]) == 2
print(generate_latest().decode())
"""


def test_every_block_runs_in_order_as_one_program(cohere_server: CohereServer) -> None:
    """All blocks, one after another in a fresh interpreter (the way a reader pastes them), with
    the Cohere SDK pointed at the test server through its own `CO_API_URL`."""
    env = {
        **os.environ,
        "CO_API_URL": cohere_server.url,
        "CACHE_KEY_2026_11": "11" * 32,
        "CACHE_DIGEST_SECRET": "a digest secret of 32 characters",
    }
    result = subprocess.run(
        [sys.executable, "-c", DRIVER],
        input=json.dumps(BLOCKS),
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert len(cohere_server.ok_calls) == 1
    hits = re.search(
        r'^ai_agent_cache_hits_total\{cache_layer="embedding"\} (\S+)$', result.stdout, re.M
    )
    assert hits is not None, result.stdout[-2000:]
    assert float(hits.group(1)) == 1
