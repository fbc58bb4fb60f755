"""The demo service: workspaces (tenants) with clients and their session notes, an expensive
`POST /ai/query`, session writes that invalidate, and `/metrics`.

The tenant comes from the `X-Workspace-ID` header, a stand-in for real authentication. A query
is a small RAG pipeline: the question is embedded through the L2 `CachedEmbedder`, the client's
most similar notes are retrieved (cosine), and a simulated model "generates" the answer in
`latency` seconds. `POST /v1/chat/completions` answers the same question OpenAI-style, whole or
streamed as Server-Sent Events (`"stream": true`). Notes are embedded (uncached) when written
and at startup. The answer depends only on the question (case and spacing aside) and the
retrieved notes, so a cached answer that differs from a fresh one is stale, never noise.

`/_demo/stage` and `/_demo/drain` are demo-only controls for `cachegate replay`, answered to
loopback clients only.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import math
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from cachegate.demo.chat import CHAT_ROUTE, Question, chat_policy, completion, events, parse
from cachegate.demo.embedder import LOCAL_MODEL, LocalEmbedder, MeteredClient
from cachegate.demo.stages import StageControl, StageSwitchRefused
from cachegate.demo.workload import Catalog
from cachegate.embeddings import AsyncEmbedClient, CachedEmbedder
from cachegate.flags import UnknownStageError
from cachegate.gate import CacheGate
from cachegate.keys import Normalization, normalize_text
from cachegate.metrics import exposition
from cachegate.middleware import CacheGateMiddleware
from cachegate.policy import Extractor, Policy, WriteRule, body_field, header, trusted_header
from cachegate.shadow import JsonComparator

TENANT_HEADER = "X-Workspace-ID"
QUERY_COST = 0.017
"""The original estimate of one RAG query's cost in dollars."""
TOP_K = 3
"""Notes retrieved per question."""
DRAIN_TIMEOUT = 30.0
log = logging.getLogger("cachegate.demo")
_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost", "testclient"})


@dataclass
class Session:
    """One therapy session note of a client, with the vector of the text it was indexed at."""

    client_id: str
    notes: str
    vector: list[float] | None = None
    indexed: str | None = None
    """The text `vector` was computed from; a note edited since is indexed again."""


@dataclass
class Notes:
    """Session notes per workspace: the demo's database."""

    sessions: dict[str, dict[str, Session]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @classmethod
    def seeded(cls, catalog: Catalog) -> Notes:
        """The synthetic notes of every workspace and client of `catalog`."""
        notes = cls()
        for workspace, client, text in catalog.notes():
            notes.add(workspace, client, text)
        return notes

    def add(
        self, workspace: str, client_id: str, text: str, vector: list[float] | None = None
    ) -> str:
        """Store a new note (with its vector when known); its session id."""
        session_id = self.new_id()
        indexed = text if vector is not None else None
        session = Session(client_id, text, vector, indexed)
        self.sessions.setdefault(workspace, {})[session_id] = session
        return session_id

    def client_sessions(self, workspace: str, client_id: str | None) -> list[Session]:
        """The sessions of one client of a workspace (all clients when None), oldest first."""
        return [
            session
            for session in self.sessions.get(workspace, {}).values()
            if client_id is None or session.client_id == client_id
        ]

    def client_notes(self, workspace: str, client_id: str | None) -> list[str]:
        """The notes of one client of a workspace (all clients when None), oldest first."""
        return [session.notes for session in self.client_sessions(workspace, client_id)]

    def unindexed(self) -> list[Session]:
        """Every session whose vector is missing or older than its text."""
        return [
            session
            for sessions in self.sessions.values()
            for session in sessions.values()
            if session.indexed != session.notes
        ]

    def new_id(self) -> str:
        """A fresh session id."""
        return f"s{next(self._ids)}"


def policies() -> list[Policy]:
    """The demo's cached routes: answers per workspace and client, keyed on the question; the
    chat route's streamed answers too."""
    return [
        Policy(
            "/ai/query",
            tenant=trusted_header(TENANT_HEADER),
            subject=body_field("client_id"),
            key={"query": body_field("query")},
            normalization=Normalization.LOOSE,
            ttl=300.0,
            rerun_safe=True,
            comparator=JsonComparator(ignore=frozenset({"latency_ms"})),
            cost_per_call=QUERY_COST,
        ),
        chat_policy(TENANT_HEADER, QUERY_COST),
    ]


def write_rules(*, tenant: Extractor | None = None) -> list[WriteRule]:
    """Session writes invalidate their client's answers (tenant from `X-Workspace-ID` unless
    another extractor is given)."""
    tenant = tenant if tenant is not None else header(TENANT_HEADER)
    return [
        WriteRule(
            "/sessions",
            tenant=tenant,
            methods=frozenset({"POST"}),
            subject=body_field("client_id"),
            reason="session_created",
        ),
        WriteRule(
            "/sessions/{session_id}",
            tenant=tenant,
            methods=frozenset({"PUT", "PATCH", "DELETE"}),
            response_subject="client_id",
            reason="session_changed",
        ),
    ]


def answer(query: str, notes: list[str]) -> str:
    """A deterministic stand-in for generation over the retrieved `notes`.

    Case and spacing of the question do not change the answer (a model would not care either).
    """
    question = normalize_text(query, Normalization.LOOSE)
    digest = hashlib.sha256("\n".join([question, *notes]).encode()).hexdigest()[:8]
    if not notes:
        return f"No session note mentions that (ref {digest})."
    summary = notes[0].split(". ")[0][:160]
    return f"{len(notes)} notes are relevant. Most relevant: {summary} (ref {digest})"


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity; 0 when either vector is zero."""
    dot = math.fsum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(math.fsum(x * x for x in a)) * math.sqrt(math.fsum(y * y for y in b))
    return dot / norm if norm else 0.0


class DemoMetrics:
    """The demo's own counters: fresh calls that reached the model and the embedding provider."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.model_calls = Counter(
            "cachegate_demo_model_calls",
            "Answers generated by the (simulated) model: fresh computations.",
            registry=registry,
        )
        self.embed_calls = Counter(
            "cachegate_demo_embed_calls",
            "Calls that reached the embedding provider, by input type.",
            ["input_type"],
            registry=registry,
        )
        for input_type in ("search_query", "search_document"):
            self.embed_calls.labels(input_type)


_demo_metrics: weakref.WeakKeyDictionary[CollectorRegistry, DemoMetrics] = (
    weakref.WeakKeyDictionary()
)


def demo_metrics(registry: CollectorRegistry = REGISTRY) -> DemoMetrics:
    """The demo counters of `registry`, registered once."""
    metrics = _demo_metrics.get(registry)
    if metrics is None:
        metrics = _demo_metrics[registry] = DemoMetrics(registry)
    return metrics


def create_app(
    gate: CacheGate,
    *,
    latency: float = 0.3,
    registry: CollectorRegistry = REGISTRY,
    notes: Notes | None = None,
    embedder: CachedEmbedder | None = None,
    documents: AsyncEmbedClient | None = None,
    model: str = LOCAL_MODEL,
    stages: StageControl | None = None,
    top_k: int = TOP_K,
) -> Starlette:
    """The demo app behind `CacheGateMiddleware`; `latency` simulates the model's time.

    `embedder` embeds questions (the L2 cache; default: a `CachedEmbedder` over a latency-free
    `LocalEmbedder` and the gate's store); `documents` embeds notes for retrieval, uncached.
    `stages` enables the demo-only stage switch.
    """
    data = notes if notes is not None else Notes()
    counters = demo_metrics(registry)
    if embedder is None or documents is None:
        local = MeteredClient(LocalEmbedder(), counters.embed_calls)
        documents = documents if documents is not None else local
        if embedder is None:
            embedder = CachedEmbedder(
                local,
                gate.store,
                namespace=gate.keyspace.namespace,
                key_secret=gate.keyspace.secret,
                rollout=gate.rollout,
                metrics=gate.metrics,
                normalization=Normalization.EXACT,
            )
    questions, index_client = embedder, documents

    def workspace(request: Request) -> str | None:
        return request.headers.get(TENANT_HEADER) or None

    async def index(sessions: list[Session]) -> None:
        """Embed the notes of `sessions` that are not indexed at their current text."""
        stale = [session for session in sessions if session.indexed != session.notes]
        for start in range(0, len(stale), 96):
            batch = stale[start : start + 96]
            texts = [session.notes for session in batch]
            response = await index_client.embed(
                texts=texts, model=model, input_type="search_document", embedding_types=["float"]
            )
            vectors = response.embeddings.float_ or []
            for session, text, vector in zip(batch, texts, vectors, strict=True):
                if session.notes == text:
                    session.vector, session.indexed = list(vector), text

    async def vector_of(text: str) -> list[float] | None:
        """A written note's vector, computed before the note becomes visible (so the data and
        the index change together); None if the provider failed: the next query retries."""
        try:
            response = await index_client.embed(
                texts=[text], model=model, input_type="search_document", embedding_types=["float"]
            )
        except Exception as error:
            log.warning("indexing a note failed (%s); retried per query", type(error).__name__)
            return None
        return list((response.embeddings.float_ or [[]])[0]) or None

    async def retrieve(tenant: str, client: str | None, text: str) -> list[str]:
        sessions = data.client_sessions(tenant, client)
        await index(sessions)
        response = await questions.embed(
            texts=[text],
            model=model,
            input_type="search_query",
            embedding_types=["float"],
            tenant=tenant,
        )
        vector = (response.embeddings.float_ or [[]])[0]
        scored = [
            (cosine(vector, session.vector), position, session.notes)
            for position, session in enumerate(sessions)
            if session.vector is not None and len(session.vector) == len(vector)
        ]
        scored.sort(key=lambda item: (-item[0], item[1]))
        return [note for score, _, note in scored[:top_k] if score > 0.0]

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
        relevant = await retrieve(tenant, client, text)
        await asyncio.sleep(latency)
        counters.model_calls.inc()
        return JSONResponse(
            {
                "answer": answer(text, relevant),
                "client_id": client,
                "latency_ms": round(latency * 1000),
            }
        )

    async def chat(request: Request) -> Response:
        tenant = workspace(request)
        if tenant is None:
            return JSONResponse({"error": f"{TENANT_HEADER} header required"}, status_code=401)
        try:
            question = parse(await request.json())
        except ValueError:
            question = "body must be JSON"
        if not isinstance(question, Question):
            return JSONResponse({"error": {"message": question}}, status_code=400)
        relevant = await retrieve(tenant, question.user, question.text)
        text = answer(question.text, relevant)
        counters.model_calls.inc()
        if not question.stream:
            await asyncio.sleep(latency)
            return JSONResponse(completion(question, text))
        pieces = list(events(question, text))
        return StreamingResponse(_paced(pieces, latency), media_type="text/event-stream")

    async def create_session(request: Request) -> Response:
        tenant = workspace(request)
        payload = await _json_object(request)
        if tenant is None or payload is None:
            return JSONResponse({"error": "workspace and JSON body required"}, status_code=400)
        client_id, text = payload.get("client_id"), payload.get("notes")
        if not isinstance(client_id, str) or not isinstance(text, str):
            return JSONResponse({"error": "client_id and notes must be strings"}, status_code=422)
        vector = await vector_of(text)
        session_id = data.add(tenant, client_id, text, vector)
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
            vector = await vector_of(text)
            session.notes, session.vector = text, vector
            session.indexed = text if vector is not None else None
        return JSONResponse({"session_id": session_id, "client_id": session.client_id})

    async def metrics(request: Request) -> Response:
        return Response(exposition(registry), media_type=CONTENT_TYPE_LATEST)

    async def stage(request: Request) -> Response:
        if not _loopback(request):
            return JSONResponse({"error": "demo controls answer loopback clients only"}, 403)
        if stages is None:
            return JSONResponse({"error": "this app has no stage control"}, status_code=404)
        if request.method == "POST":
            payload = await _json_object(request)
            name = None if payload is None else payload.get("stage")
            if not isinstance(name, str):
                return JSONResponse({"error": 'body must be {"stage": NAME}'}, status_code=422)
            try:
                stages.switch(name)
            except UnknownStageError as error:
                body = {"error": str(error), "stages": stages.stages()}
                return JSONResponse(body, status_code=422)
            except StageSwitchRefused as error:
                return JSONResponse({"error": str(error)}, status_code=409)
        return JSONResponse(await asyncio.to_thread(stages.report))

    async def drain(request: Request) -> Response:
        if not _loopback(request):
            return JSONResponse({"error": "demo controls answer loopback clients only"}, 403)
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT):
                await gate.drain()
        except TimeoutError:
            return JSONResponse({"drained": False}, status_code=504)
        return JSONResponse({"drained": True})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if stages is not None:
            await stages.start()
        try:
            try:
                await index(data.unindexed())
            except Exception as error:
                log.warning(
                    "indexing the notes failed (%s); retried per query", type(error).__name__
                )
            yield
        finally:
            if stages is not None:
                await stages.aclose()
            await gate.aclose()

    app = Starlette(
        routes=[
            Route("/ai/query", query, methods=["POST"]),
            Route(CHAT_ROUTE, chat, methods=["POST"]),
            Route("/sessions", create_session, methods=["POST"]),
            Route("/sessions/{session_id}", change_session, methods=["PUT", "PATCH", "DELETE"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/_demo/stage", stage, methods=["GET", "POST"]),
            Route("/_demo/drain", drain, methods=["POST"]),
        ],
        lifespan=lifespan,
    )
    app.add_middleware(CacheGateMiddleware, gate=gate)
    return app


async def _paced(pieces: list[bytes], latency: float) -> AsyncIterator[bytes]:
    """The pieces of a streamed answer spread over `latency` seconds, as a model streams."""
    delay = latency / max(len(pieces), 1)
    for piece in pieces:
        await asyncio.sleep(delay)
        yield piece


def _loopback(request: Request) -> bool:
    client = request.client
    return client is not None and (client.host in _LOOPBACK or client.host.startswith("127."))


async def _json_object(request: Request) -> dict[str, object] | None:
    try:
        payload = await request.json()
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None
