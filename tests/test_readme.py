"""The README's quickstart works as written: its Python blocks run and behave as it says."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)

pytestmark = pytest.mark.anyio


def _app(source: str) -> Any:
    namespace: dict[str, Any] = {}
    exec(compile(source, "README.md", "exec"), namespace)
    return namespace["app"], namespace["gate"]


@pytest.mark.parametrize("index", [0, 1], ids=["starlette", "fastapi"])
async def test_quickstart_hits_misses_and_isolates_tenants(index: int) -> None:
    app, gate = _app(BLOCKS[index])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:

        async def ask(workspace: str) -> httpx.Response:
            return await client.post(
                "/ai/query",
                json={"query": "How did the last session go?", "client_id": "c1"},
                headers={"X-Workspace-ID": workspace},
            )

        first, second, other = await ask("w1"), await ask("w1"), await ask("w2")
    assert [r.headers["x-cachegate"] for r in (first, second, other)] == ["miss", "hit", "miss"]
    assert first.json() == second.json()
    await gate.aclose()


async def test_starlette_quickstart_write_invalidates() -> None:
    app, gate = _app(BLOCKS[0])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
        ask = {"json": {"query": "q", "client_id": "c1"}, "headers": {"X-Workspace-ID": "w1"}}
        assert (await client.post("/ai/query", **ask)).headers["x-cachegate"] == "miss"
        assert (await client.post("/ai/query", **ask)).headers["x-cachegate"] == "hit"
        write = await client.post(
            "/sessions", json={"client_id": "c1"}, headers={"X-Workspace-ID": "w1"}
        )
        assert write.status_code == 201
        assert (await client.post("/ai/query", **ask)).headers["x-cachegate"] == "miss"
    await gate.aclose()


async def test_invalidate_snippet_runs() -> None:
    _, gate = _app(BLOCKS[0])
    source = "async def run(gate):\n" + "".join(f"    {line}\n" for line in BLOCKS[2].splitlines())
    namespace: dict[str, Any] = {}
    exec(source, namespace)
    counter = gate.metrics.invalidations.labels("import")
    before = counter._value.get()
    await namespace["run"](gate)
    assert counter._value.get() == before + 2
    assert gate.invalidator.pending_count == 0
    await gate.aclose()
