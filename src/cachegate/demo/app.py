"""The demo service: workspaces (tenants) with clients and their session notes, an expensive
`POST /ai/query`, session writes that invalidate, and `/metrics`.

The tenant comes from the `X-Workspace-ID` header, a stand-in for real authentication. The "AI"
work is slow and deterministic: the answer depends only on the question and the client's notes.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cachegate.gate import CacheGate
from cachegate.keys import Normalization
from cachegate.middleware import CacheGateMiddleware
from cachegate.policy import Policy, WriteRule, body_field, header
from cachegate.shadow import JsonComparator

TENANT_HEADER = "X-Workspace-ID"
QUERY_COST = 0.017
"""The original estimate of one RAG query's cost in dollars."""


@dataclass
class Session:
    """One therapy session note of a client."""

    client_id: str
    notes: str


@dataclass
class Notes:
    """Session notes per workspace: the demo's database."""

    sessions: dict[str, dict[str, Session]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def client_notes(self, workspace: str, client_id: str | None) -> list[str]:
        """The notes of one client of a workspace (all clients when None), oldest first."""
        return [
            session.notes
            for session in self.sessions.get(workspace, {}).values()
            if client_id is None or session.client_id == client_id
        ]

    def new_id(self) -> str:
        """A fresh session id."""
        return f"s{next(self._ids)}"


def policies() -> list[Policy]:
    """The demo's cached route: answers per workspace and client, keyed on the question."""
    return [
        Policy(
            "/ai/query",
            tenant=header(TENANT_HEADER),
            subject=body_field("client_id"),
            key={"query": body_field("query")},
            normalization=Normalization.LOOSE,
            ttl=300.0,
            rerun_safe=True,
            comparator=JsonComparator(ignore=frozenset({"latency_ms"})),
            cost_per_call=QUERY_COST,
        )
    ]


def write_rules() -> list[WriteRule]:
    """Session writes invalidate their client's answers."""
    return [
        WriteRule(
            "/sessions",
            tenant=header(TENANT_HEADER),
            methods=frozenset({"POST"}),
            subject=body_field("client_id"),
            reason="session_created",
        ),
        WriteRule(
            "/sessions/{session_id}",
            tenant=header(TENANT_HEADER),
            methods=frozenset({"PUT", "PATCH", "DELETE"}),
            response_subject="client_id",
            reason="session_changed",
        ),
    ]


def answer(query: str, notes: list[str]) -> str:
    """A deterministic stand-in for retrieval and generation over the notes."""
    words = {word.strip(".,?!").lower() for word in query.split()}
    relevant = [note for note in notes if words & {w.strip(".,").lower() for w in note.split()}]
    digest = hashlib.sha256("\n".join([query, *notes]).encode()).hexdigest()[:8]
    if not relevant:
        return f"No session note mentions that ({len(notes)} notes searched; ref {digest})."
    return (
        f"{len(relevant)} of {len(notes)} notes are relevant: {relevant[-1][:120]} (ref {digest})"
    )


def create_app(
    gate: CacheGate,
    *,
    latency: float = 0.3,
    registry: CollectorRegistry = REGISTRY,
    notes: Notes | None = None,
) -> Starlette:
    """The demo app behind `CacheGateMiddleware`; `latency` simulates the model's time."""
    data = notes if notes is not None else Notes()

    def workspace(request: Request) -> str | None:
        return request.headers.get(TENANT_HEADER) or None

    async def query(request: Request) -> Response:
        tenant = workspace(request)
        if tenant is None:
            return JSONResponse({"error": f"{TENANT_HEADER} header required"}, status_code=401)
        try:
            payload = await request.json()
        except ValueError:
            return JSONResponse({"error": "body must be JSON"}, status_code=400)
        text = payload.get("query") if isinstance(payload, dict) else None
        if not isinstance(text, str) or not text.strip():
            return JSONResponse({"error": "query must be a non-empty string"}, status_code=422)
        client_id = payload.get("client_id")
        client = client_id if isinstance(client_id, str) else None
        await asyncio.sleep(latency)
        return JSONResponse(
            {
                "answer": answer(text, data.client_notes(tenant, client)),
                "client_id": client,
                "latency_ms": round(latency * 1000),
            }
        )

    async def create_session(request: Request) -> Response:
        tenant = workspace(request)
        payload = await _json_object(request)
        if tenant is None or payload is None:
            return JSONResponse({"error": "workspace and JSON body required"}, status_code=400)
        client_id, text = payload.get("client_id"), payload.get("notes")
        if not isinstance(client_id, str) or not isinstance(text, str):
            return JSONResponse({"error": "client_id and notes must be strings"}, status_code=422)
        session_id = data.new_id()
        data.sessions.setdefault(tenant, {})[session_id] = Session(client_id, text)
        return JSONResponse({"session_id": session_id, "client_id": client_id}, status_code=201)

    async def change_session(request: Request) -> Response:
        tenant = workspace(request)
        session_id = request.path_params["session_id"]
        session = data.sessions.get(tenant or "", {}).get(session_id)
        if tenant is None or session is None:
            return JSONResponse({"error": "no such session"}, status_code=404)
        if request.method == "DELETE":
            del data.sessions[tenant][session_id]
        else:
            payload = await _json_object(request)
            text = None if payload is None else payload.get("notes")
            if not isinstance(text, str):
                return JSONResponse({"error": "notes must be a string"}, status_code=422)
            session.notes = text
        return JSONResponse({"session_id": session_id, "client_id": session.client_id})

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await gate.aclose()

    app = Starlette(
        routes=[
            Route("/ai/query", query, methods=["POST"]),
            Route("/sessions", create_session, methods=["POST"]),
            Route("/sessions/{session_id}", change_session, methods=["PUT", "PATCH", "DELETE"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.add_middleware(CacheGateMiddleware, gate=gate)
    return app


async def _json_object(request: Request) -> dict[str, object] | None:
    try:
        payload = await request.json()
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None
