"""A notes service for `uvicorn --factory`: several processes share one Redis and one SQLite file.

`POST /ai/query` (cached per workspace and client) answers with the client's notes as they are
in the database when its computation starts; `POST /notes` adds a note and answers 201;
`POST /notes/indexed` answers 201 at once and adds the note in a `BackgroundTask` a little later
(as an indexing step would). Configured by `REDIS_URL`, `CACHEGATE_TEST_NAMESPACE`, `NOTES_DB`,
and optionally `CACHEGATE_RETRY_INTERVAL` (the invalidation retry) and `CACHEGATE_DEADLINE`.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3

from fastapi import BackgroundTasks, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from cachegate import (
    CacheGate,
    CacheGateMiddleware,
    Policy,
    RedisStore,
    WriteRule,
    body_field,
    trusted_header,
)
from cachegate.metrics import exposition

INDEXING_DELAY = 0.3
"""How long the background task of `POST /notes/indexed` takes before the note is written."""


def _notes(path: str, tenant: str, client: str) -> list[str]:
    with sqlite3.connect(path, timeout=5) as db:
        rows = db.execute(
            "SELECT text FROM notes WHERE tenant = ? AND client = ? ORDER BY id", (tenant, client)
        ).fetchall()
    return [row[0] for row in rows]


def _add(path: str, tenant: str, client: str, text: str) -> None:
    with sqlite3.connect(path, timeout=5) as db:
        db.execute(
            "INSERT INTO notes (tenant, client, text) VALUES (?, ?, ?)", (tenant, client, text)
        )


def create_db(path: str) -> None:
    """The notes table (the test creates it once, before the processes start)."""
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS notes "
            "(id INTEGER PRIMARY KEY, tenant TEXT, client TEXT, text TEXT)"
        )


def make_app() -> FastAPI:
    """Built in each process from the environment."""
    database = os.environ["NOTES_DB"]
    store = RedisStore.from_url(
        os.environ["REDIS_URL"], deadline=float(os.environ.get("CACHEGATE_DEADLINE", "0.5"))
    )
    tenant = trusted_header("x-workspace-id")  # the tests play the trusted proxy
    gate = CacheGate(
        policies=[
            Policy(
                "/ai/query",
                tenant=tenant,
                subject=body_field("client_id"),
                key={"query": body_field("query")},
                ttl=300,
            )
        ],
        write_rules=[
            WriteRule("/notes", tenant=tenant, subject=body_field("client_id")),
            WriteRule("/notes/indexed", tenant=tenant, subject=body_field("client_id")),
        ],
        store=store,
        namespace=os.environ["CACHEGATE_TEST_NAMESPACE"],
    )
    retry = os.environ.get("CACHEGATE_RETRY_INTERVAL")
    if retry:
        gate.invalidator.retry_interval = float(retry)
    app = FastAPI()

    @app.post("/ai/query")
    async def query(request: Request) -> dict[str, object]:
        body = await request.json()
        notes = _notes(database, request.headers["x-workspace-id"], body["client_id"])
        return {"notes": notes, "pid": os.getpid()}

    @app.post("/notes", status_code=201)
    async def add(request: Request) -> dict[str, bool]:
        body = await request.json()
        _add(database, request.headers["x-workspace-id"], body["client_id"], body["text"])
        return {"ok": True}

    async def index(tenant: str, client: str, text: str) -> None:
        await asyncio.sleep(INDEXING_DELAY)
        _add(database, tenant, client, text)

    @app.post("/notes/indexed", status_code=201)
    async def add_indexed(request: Request, tasks: BackgroundTasks) -> dict[str, bool]:
        body = await request.json()
        tasks.add_task(index, request.headers["x-workspace-id"], body["client_id"], body["text"])
        return {"ok": True}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(exposition(), media_type="text/plain; version=0.0.4")

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({"pid": os.getpid()})

    app.add_middleware(CacheGateMiddleware, gate=gate)
    return app
