"""The synthetic clinical workload shared by the demo service and `cachegate replay`.

Everything is generated from seeds with SHA-256 and `random.Random`: no real data, the same
workspaces, clients, session notes and questions on every machine. The demo seeds its notes from
a `Catalog`; the replay draws operations from the same catalog, so both agree on the ids.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

TOPICS = (
    ("sleep", "sleeping five hours a night, waking early", "sleep hygiene plan"),
    ("anxiety", "anxiety before work meetings", "breathing exercises"),
    ("mood", "low mood most mornings", "behavioural activation schedule"),
    ("work stress", "work stress after a reorganisation", "boundary setting at work"),
    ("family conflict", "arguments with a sibling", "communication skills practice"),
    ("panic", "two panic attacks on public transport", "interoceptive exposure"),
    ("appetite", "reduced appetite and skipped lunches", "regular meal planning"),
    ("medication", "missed doses of prescribed medication", "a pill organiser and reminders"),
    ("exercise", "walking three times a week", "gradual increase of activity"),
    ("social withdrawal", "avoiding friends and cancelling plans", "small social goals"),
    ("grief", "grief after the loss of a parent", "a memory journal"),
    ("alcohol", "drinking more on weekends", "a drinking diary"),
    ("self-esteem", "harsh self-criticism", "cognitive restructuring worksheets"),
    ("concentration", "trouble concentrating at work", "task chunking"),
    ("relationships", "tension with a partner", "scheduled check-in conversations"),
    ("irritability", "irritability with colleagues", "pause-and-label technique"),
)
"""(topic, what the client reported, what was agreed): the vocabulary of the seeded notes."""

PROGRESS = (
    "reports improvement since last session",
    "reports little change",
    "reports setbacks this week",
    "reports steady progress",
)

QUESTIONS = (
    "How has the client been sleeping lately?",
    "What coping strategies were discussed for anxiety?",
    "Summarise the last session.",
    "Has the client's mood improved?",
    "What did we agree as homework?",
    "Any mention of medication side effects or missed doses?",
    "How is the client managing work stress?",
    "What progress has the client made overall?",
    "Has the client reported any panic attacks?",
    "What are the client's current goals?",
    "Is there any sign of social withdrawal?",
    "How is the client's appetite?",
    "What family issues came up in sessions?",
    "Has alcohol use come up recently?",
    "How is the client coping with grief?",
    "What exercise routine does the client follow?",
    "What should I follow up on next session?",
    "Which interventions seem to help the most?",
    "Has the client talked about self-esteem?",
    "How is the client's concentration at work?",
    "Are there relationship difficulties?",
    "Has irritability been an issue?",
    "What risk factors were noted?",
    "What changed since the first session?",
    "List the main themes of recent sessions.",
    "What did the client say about breathing exercises?",
    "How consistent is the client with the sleep plan?",
    "What triggers were identified?",
    "Has the client mentioned friends or social plans?",
    "What is the client's support network like?",
    "How does the client describe their week?",
    "What strengths does the client show?",
    "Were any setbacks reported?",
    "How motivated is the client for therapy?",
    "What should the treatment plan focus on?",
    "Did the client complete the journal?",
    "How does the client rate their anxiety now?",
    "What did the client say about the reorganisation at work?",
    "What assessment scores were recorded?",
    "Is a referral worth considering?",
)
"""The questions therapists ask, most popular first (the replay draws them Zipf-distributed)."""


def _rng(*parts: object) -> random.Random:
    """A generator seeded from `parts` through SHA-256 (never Python's `hash()`)."""
    seed = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(seed[:8], "big"))


def synthetic_note(rng: random.Random) -> str:
    """One synthetic SOAP-style session note."""
    topic, reported, agreed = rng.choice(TOPICS)
    other, other_reported, _ = rng.choice(TOPICS)
    return (
        f"S: Client {rng.choice(PROGRESS)}; main concern {topic}: {reported}. "
        f"Also mentioned {other}: {other_reported}. "
        f"O: Engaged, affect {rng.choice(('flat', 'anxious', 'euthymic', 'tearful', 'calm'))}. "
        f"A: {topic.capitalize()} remains the focus. "
        f"P: Continue {agreed}; review {other} next session."
    )


@dataclass(frozen=True)
class Catalog:
    """The demo's synthetic tenants: `workspaces` workspaces of `clients` clients each, with
    `notes_per_client` seeded session notes per client."""

    workspaces: int = 30
    clients: int = 6
    notes_per_client: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.workspaces, self.clients) < 1 or self.notes_per_client < 0:
            raise ValueError("a catalog needs at least one workspace and one client")
        if self.workspaces > 10_000 or self.clients > 1_000 or self.notes_per_client > 100:
            raise ValueError("catalog too large for a demo")

    def workspace_ids(self) -> list[str]:
        """The workspace (tenant) ids, most active first in the replay."""
        return [f"ws-{index:03d}" for index in range(1, self.workspaces + 1)]

    def client_ids(self) -> list[str]:
        """The client ids of every workspace, most discussed first in the replay."""
        return [f"client-{index:02d}" for index in range(1, self.clients + 1)]

    def notes(self) -> Iterator[tuple[str, str, str]]:
        """The seeded notes as (workspace, client, text), deterministic per catalog."""
        for workspace, client in itertools.product(self.workspace_ids(), self.client_ids()):
            rng = _rng("notes", self.seed, workspace, client)
            for _ in range(self.notes_per_client):
                yield workspace, client, synthetic_note(rng)


class Zipf:
    """Draws indexes 0..n-1 with probability proportional to 1 / (rank ** s)."""

    def __init__(self, n: int, s: float) -> None:
        if n < 1 or s < 0:
            raise ValueError("Zipf needs n >= 1 and s >= 0")
        weights = [1.0 / (rank**s) for rank in range(1, n + 1)]
        self._cumulative = list(itertools.accumulate(weights))

    def draw(self, rng: random.Random) -> int:
        """One index."""
        point = rng.random() * self._cumulative[-1]
        return min(bisect.bisect_right(self._cumulative, point), len(self._cumulative) - 1)


def near_duplicate(text: str, rng: random.Random) -> str:
    """The same question typed differently: case and whitespace only, never other words."""
    choice = rng.randrange(4)
    if choice == 0:
        return text.lower()
    if choice == 1:
        return "  " + text + " "
    if choice == 2:
        return text.replace(" ", "  ", 2)
    return text.upper()


@dataclass(frozen=True)
class Query:
    """`POST /ai/query` for one client of one workspace."""

    workspace: str
    client: str
    text: str
    variant: bool


@dataclass(frozen=True)
class CreateSession:
    """`POST /sessions`: a new note for a client."""

    workspace: str
    client: str
    notes: str


@dataclass(frozen=True)
class UpdateSession:
    """`PUT /sessions/{id}` of a session the replay created."""

    workspace: str
    session_id: str
    notes: str


@dataclass(frozen=True)
class DeleteSession:
    """`DELETE /sessions/{id}` of a session the replay created."""

    workspace: str
    session_id: str


Operation = Query | CreateSession | UpdateSession | DeleteSession


@dataclass(frozen=True)
class Mix:
    """The shape of the workload: popularity skews, write share and near-duplicate share."""

    workspace_skew: float = 1.0
    client_skew: float = 1.0
    question_skew: float = 1.1
    write_ratio: float = 0.05
    near_duplicate_ratio: float = 0.15

    def __post_init__(self) -> None:
        if not 0.0 <= self.write_ratio <= 1.0 or not 0.0 <= self.near_duplicate_ratio <= 1.0:
            raise ValueError("write_ratio and near_duplicate_ratio must be between 0 and 1")


class Workload:
    """Draws operations: Zipf-distributed questions across workspaces and clients, near
    duplicates, and session writes (create, update, delete) that invalidate.

    Updates and deletes apply to sessions this workload created (`created`, filled by `track`);
    at most `max_tracked` are remembered, so memory stays bounded however long it runs.
    """

    def __init__(
        self,
        catalog: Catalog,
        mix: Mix,
        rng: random.Random,
        *,
        questions: Sequence[str] = QUESTIONS,
        max_tracked: int = 500,
    ) -> None:
        self.catalog = catalog
        self.mix = mix
        self.rng = rng
        self.questions = list(questions)
        self.workspaces = catalog.workspace_ids()
        self.clients = catalog.client_ids()
        self._workspace = Zipf(len(self.workspaces), mix.workspace_skew)
        self._client = Zipf(len(self.clients), mix.client_skew)
        self._question = Zipf(len(self.questions), mix.question_skew)
        self.max_tracked = max_tracked
        self.created: list[tuple[str, str]] = []
        """(workspace, session id) of sessions created and not deleted."""

    def next(self) -> Operation:
        """The next operation."""
        rng = self.rng
        workspace = self.workspaces[self._workspace.draw(rng)]
        client = self.clients[self._client.draw(rng)]
        if rng.random() < self.mix.write_ratio:
            return self._write(workspace, client)
        text = self.questions[self._question.draw(rng)]
        variant = rng.random() < self.mix.near_duplicate_ratio
        return Query(workspace, client, near_duplicate(text, rng) if variant else text, variant)

    def _write(self, workspace: str, client: str) -> Operation:
        rng = self.rng
        kind = rng.random()
        full = len(self.created) >= self.max_tracked
        if self.created and (kind >= 0.6 or full):
            owner, session_id = self.created.pop(rng.randrange(len(self.created)))
            if kind >= 0.9 or full:
                return DeleteSession(owner, session_id)
            return UpdateSession(owner, session_id, synthetic_note(rng))
        return CreateSession(workspace, client, synthetic_note(rng))

    def track(self, workspace: str, session_id: str) -> None:
        """Remember a session the target holds (created, or updated: an update takes the
        session out of the list while it is in flight, so no delete can race it)."""
        if len(self.created) < self.max_tracked:
            self.created.append((workspace, session_id))
