"""The demo's database and retrieval: session notes per workspace, their vectors, and the
most similar notes of a client for a question (cosine over the embedded notes).

Notes are embedded (uncached) when written and at startup; questions go through the L2
`CachedEmbedder`. The answer depends only on the question (case and spacing aside) and the
retrieved notes, so a cached answer that differs from a fresh one is stale, never noise.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field

from cachegate.demo.workload import Catalog
from cachegate.embeddings import AsyncEmbedClient, CachedEmbedder
from cachegate.keys import Normalization, normalize_text

log = logging.getLogger("cachegate.demo")

INDEX_BATCH = 96
"""Notes embedded per provider call when indexing."""


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


@dataclass
class Retriever:
    """Embeds notes (`documents`, uncached) and questions (`questions`, the L2 cache) with
    `model`, and finds the `top_k` notes of a client most similar to a question."""

    notes: Notes
    _: KW_ONLY
    questions: CachedEmbedder
    documents: AsyncEmbedClient
    model: str
    top_k: int

    async def index(self, sessions: list[Session]) -> None:
        """Embed the notes of `sessions` that are not indexed at their current text."""
        stale = [session for session in sessions if session.indexed != session.notes]
        for start in range(0, len(stale), INDEX_BATCH):
            batch = stale[start : start + INDEX_BATCH]
            texts = [session.notes for session in batch]
            vectors = await self._documents(texts)
            for session, text, vector in zip(batch, texts, vectors, strict=True):
                if session.notes == text:
                    session.vector, session.indexed = list(vector), text

    async def vector_of(self, text: str) -> list[float] | None:
        """A written note's vector, computed before the note becomes visible (so the data and
        the index change together); None if the provider failed: the next query retries."""
        try:
            vectors = await self._documents([text])
        except Exception as error:
            log.warning("indexing a note failed (%s); retried per query", type(error).__name__)
            return None
        return list((vectors or [[]])[0]) or None

    async def _documents(self, texts: list[str]) -> list[list[float]]:
        """The float vectors of notes `texts`, embedded as documents (uncached)."""
        response = await self.documents.embed(
            texts=texts, model=self.model, input_type="search_document", embedding_types=["float"]
        )
        return response.embeddings.float_ or []

    async def retrieve(self, tenant: str, client: str | None, text: str) -> list[str]:
        """The notes of `client` (every client when None) most similar to `text`, best first."""
        sessions = self.notes.client_sessions(tenant, client)
        await self.index(sessions)
        response = await self.questions.embed(
            texts=[text],
            model=self.model,
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
        return [note for score, _, note in scored[: self.top_k] if score > 0.0]
