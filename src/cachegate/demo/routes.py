"""The demo's endpoints: the expensive `POST /ai/query` and `POST /v1/chat/completions` (a small
RAG pipeline and a simulated model that takes `latency` seconds), session writes that invalidate,
and `/metrics`. The tenant comes from the `X-Workspace-ID` header, a stand-in for real
authentication."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from cachegate.demo.chat import Question, completion, events, parse
from cachegate.demo.notes import Retriever, answer
from cachegate.metrics import exposition

TENANT_HEADER = "X-Workspace-ID"


class Endpoints:
    """The handlers of the demo's routes, over one `Retriever` and its notes."""

    def __init__(
        self,
        retriever: Retriever,
        *,
        latency: float,
        model_calls: Counter,
        registry: CollectorRegistry,
    ) -> None:
        self.retriever = retriever
        self.notes = retriever.notes
        self.latency = latency
        self.model_calls = model_calls
        self.registry = registry

    async def query(self, request: Request) -> Response:
        """`POST /ai/query`: an answer over the client's most relevant notes."""
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
        relevant = await self.retriever.retrieve(tenant, client, text)
        await asyncio.sleep(self.latency)
        self.model_calls.inc()
        return JSONResponse(
            {
                "answer": answer(text, relevant),
                "client_id": client,
                "latency_ms": round(self.latency * 1000),
            }
        )

    async def chat(self, request: Request) -> Response:
        """`POST /v1/chat/completions`: the same answer OpenAI-style, whole or streamed (SSE)."""
        tenant = workspace(request)
        if tenant is None:
            return JSONResponse({"error": f"{TENANT_HEADER} header required"}, status_code=401)
        try:
            question = parse(await request.json())
        except ValueError:
            question = "body must be JSON"
        if not isinstance(question, Question):
            return JSONResponse({"error": {"message": question}}, status_code=400)
        relevant = await self.retriever.retrieve(tenant, question.user, question.text)
        text = answer(question.text, relevant)
        self.model_calls.inc()
        if not question.stream:
            await asyncio.sleep(self.latency)
            return JSONResponse(completion(question, text))
        pieces = list(events(question, text))
        return StreamingResponse(paced(pieces, self.latency), media_type="text/event-stream")

    async def create_session(self, request: Request) -> Response:
        """`POST /sessions`: a new note, indexed before it becomes visible."""
        tenant = workspace(request)
        payload = await json_object(request)
        if tenant is None or payload is None:
            return JSONResponse({"error": "workspace and JSON body required"}, status_code=400)
        client_id, text = payload.get("client_id"), payload.get("notes")
        if not isinstance(client_id, str) or not isinstance(text, str):
            return JSONResponse({"error": "client_id and notes must be strings"}, status_code=422)
        vector = await self.retriever.vector_of(text)
        session_id = self.notes.add(tenant, client_id, text, vector)
        return JSONResponse({"session_id": session_id, "client_id": client_id}, status_code=201)

    async def change_session(self, request: Request) -> Response:
        """`PUT|PATCH|DELETE /sessions/{id}`: change or delete a note of the tenant's."""
        tenant = workspace(request)
        session_id = request.path_params["session_id"]
        session = self.notes.sessions.get(tenant or "", {}).get(session_id)
        if tenant is None or session is None:
            return JSONResponse({"error": "no such session"}, status_code=404)
        if request.method == "DELETE":
            del self.notes.sessions[tenant][session_id]
        else:
            payload = await json_object(request)
            text = None if payload is None else payload.get("notes")
            if not isinstance(text, str):
                return JSONResponse({"error": "notes must be a string"}, status_code=422)
            vector = await self.retriever.vector_of(text)
            session.notes, session.vector = text, vector
            session.indexed = text if vector is not None else None
        return JSONResponse({"session_id": session_id, "client_id": session.client_id})

    async def metrics(self, request: Request) -> Response:
        """`GET /metrics`: the registry in Prometheus text format."""
        return Response(exposition(self.registry), media_type=CONTENT_TYPE_LATEST)


def workspace(request: Request) -> str | None:
    """The request's tenant (the workspace header), None without one."""
    return request.headers.get(TENANT_HEADER) or None


async def paced(pieces: list[bytes], latency: float) -> AsyncIterator[bytes]:
    """The pieces of a streamed answer spread over `latency` seconds, as a model streams."""
    delay = latency / max(len(pieces), 1)
    for piece in pieces:
        await asyncio.sleep(delay)
        yield piece


async def json_object(request: Request) -> dict[str, object] | None:
    """The request body as a JSON object, None if it is not one."""
    try:
        payload = await request.json()
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None
