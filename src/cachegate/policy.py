"""Route policies: which requests are cached, how, and which rule a request matches.

How a request is read (tenant, subject, key material) is `cachegate.extractors`; its names are
importable from here too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from cachegate.comparators import Comparator, ExactComparator
from cachegate.extractors import (
    Ambiguous,
    BadRequest,
    ClientValue,
    Extractor,
    Guard,
    RequestView,
    as_int,
    authenticated,
    body_field,
    field_at,
    header,
    path_param,
    query_param,
    reads_body,
    scope_text,
    trusted_header,
)
from cachegate.keys import Normalization
from cachegate.types import Headers

__all__ = [
    "Ambiguous",
    "BadRequest",
    "ClientValue",
    "Extractor",
    "Guard",
    "Headers",
    "Match",
    "Pacing",
    "Policy",
    "RequestView",
    "Router",
    "Streams",
    "WriteRule",
    "as_int",
    "authenticated",
    "body_field",
    "field_at",
    "header",
    "path_param",
    "query_param",
    "scope_text",
    "trusted_header",
]


class Pacing(StrEnum):
    """How a cached stream is sent: `burst` as fast as possible, `paced` at the recorded
    inter-chunk delays (scaled and capped), so a UI that renders tokens behaves as with a fresh
    answer."""

    BURST = "burst"
    PACED = "paced"


@dataclass(frozen=True)
class Streams:
    """Whether and how a policy caches streamed responses (SSE, chunked JSON lines).

    A stream is stored only when it completed normally: the app sent its final body message, the
    client stayed, the app did not raise, the stream fit the entry size limit and, with
    `terminal` set (e.g. `b"data: [DONE]"`), its body ends with that event. A hit sends the
    same chunks with `pacing`; `paced` waits each recorded delay times `factor`, at most `cap`
    seconds.
    """

    pacing: Pacing = Pacing.BURST
    factor: float = 1.0
    cap: float = 1.0
    terminal: bytes | None = None

    def __post_init__(self) -> None:
        if self.factor < 0 or self.cap < 0:
            raise ValueError("stream pacing factor and cap must not be negative")
        object.__setattr__(self, "pacing", Pacing(self.pacing))
        if self.terminal is not None and not self.terminal.strip():
            raise ValueError("a required terminal event must not be empty")

    def delay(self, gap_seconds: float) -> float:
        """How long a paced hit waits for a recorded gap between two chunks."""
        if self.pacing is Pacing.BURST:
            return 0.0
        return min(max(gap_seconds, 0.0) * self.factor, self.cap)

    def terminated(self, body: bytes) -> bool:
        """Whether a stream's body ends with the required terminal event (or none is required)."""
        return self.terminal is None or body.rstrip().endswith(self.terminal.strip())


@dataclass(frozen=True)
class Policy:
    """How one route is cached.

    `route` is a path template (`/ai/query`, `/items/{item_id}`); its path parameters are
    always key material. `tenant` is required and a request without one bypasses; it must be an
    identity the client cannot choose (`authenticated`, `trusted_header`, or your own function),
    so `header(...)` is refused. `subject` narrows the scope (a client); `key` names the values
    that make two requests the same question (kept as a read-only copy). Text in key material
    is normalised by `normalization` (exact by default). `ttl` is absolute: reads never extend
    it.
    `guard` is checked before a lookup: what the app checks but the key does not say (the
    caller may see this client, the body validates) must hold there, or the request bypasses.
    `rerun_safe` says the route has no side effects, so shadow checks may compute it twice.
    `streams` opts the route's streamed responses in (see `Streams`); without it a streamed
    response passes through and is not stored.
    """

    route: str
    tenant: Extractor
    key: Mapping[str, Extractor] = field(default_factory=dict)
    subject: Extractor | None = None
    methods: frozenset[str] = frozenset({"POST"})
    normalization: Normalization = Normalization.EXACT
    ttl: float = 300.0
    rerun_safe: bool = False
    comparator: Comparator = field(default_factory=ExactComparator)
    cost_per_call: float = 0.0
    honor_request_no_cache: bool = True
    guard: Guard | None = None
    streams: Streams | None = None
    tenant_in_body: bool = field(init=False, repr=False, compare=False)
    """Whether reading the tenant may read the body (`reads_body`), known once per policy."""
    needs_body: bool = field(init=False, repr=False, compare=False)
    """Whether admitting a request may read its body: an extractor that may, or a guard."""

    def __post_init__(self) -> None:
        if self.ttl <= 0:
            raise ValueError(f"{self.route}: ttl must be positive")
        if isinstance(self.tenant, ClientValue) and self.guard is None:
            raise ValueError(
                f"{self.route}: tenant={self.tenant!r} is a value the client chooses, not an "
                f"identity, and a hit is served before the app checks it. Use "
                f"authenticated(...) (a user verified by an authentication middleware outside "
                f"CacheGate), trusted_header(...) (set by a trusted proxy), or give the policy "
                f"a guard= that checks the caller may act for that tenant (README: Security "
                f"model)."
            )
        object.__setattr__(self, "methods", frozenset(m.upper() for m in self.methods))
        # a read-only copy: keying remembers what the key's extractors read
        object.__setattr__(self, "key", MappingProxyType(dict(self.key)))
        object.__setattr__(self, "tenant_in_body", reads_body(self.tenant))
        needs_body = self.guard is not None or any(
            map(reads_body, (self.tenant, *self.scope_extractors()))
        )
        object.__setattr__(self, "needs_body", needs_body)

    def scope_extractors(self) -> tuple[Extractor, ...]:
        """The subject's and the key's extractors: what keys a request within its tenant."""
        subject = () if self.subject is None else (self.subject,)
        return (*subject, *self.key.values())


@dataclass(frozen=True)
class WriteRule:
    """A write route that invalidates when it succeeds.

    The scope comes from the request (`tenant`, `subject`) or, for the subject, from a field of
    the JSON response (`response_subject`, e.g. `"client_id"` of an updated session). When no
    subject can be found the whole tenant is invalidated: over-invalidating only costs misses.
    """

    route: str
    tenant: Extractor
    methods: frozenset[str] = frozenset({"POST", "PUT", "PATCH", "DELETE"})
    subject: Extractor | None = None
    response_subject: str | None = None
    reason: str = "write"

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", frozenset(m.upper() for m in self.methods))


_PARAM = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)}")


@dataclass(frozen=True)
class Match:
    """A matched route: its policy or write rule, and the path parameters."""

    rule: Policy | WriteRule
    path_params: Mapping[str, str]


_NO_PARAMS: Mapping[str, str] = MappingProxyType({})
"""A static route's path parameters: its one `Match` is shared by all its requests."""


class Router:
    """Finds the policy or write rule of a request: a dict lookup for static paths."""

    def __init__(self, rules: Iterable[Policy | WriteRule]) -> None:
        self._static: dict[tuple[str, str], Match] = {}
        self._templated: list[tuple[re.Pattern[str], frozenset[str], Policy | WriteRule]] = []
        for rule in rules:
            if not rule.route.startswith("/"):
                raise ValueError(f"route template must start with '/': {rule.route!r}")
            if _PARAM.search(rule.route):
                regex = re.compile(_PARAM.sub(r"(?P<\1>[^/]+)", _escape_template(rule.route)))
                self._templated.append((regex, rule.methods, rule))
                continue
            for method in rule.methods:
                if (method, rule.route) in self._static:
                    raise ValueError(f"two rules for {method} {rule.route}")
                self._static[(method, rule.route)] = Match(rule, _NO_PARAMS)

    def match(self, method: str, path: str) -> Match | None:
        """The rule for `method path`, or None (the request is not CacheGate's business)."""
        static = self._static.get((method, path))
        if static is not None:
            return static
        for regex, methods, templated in self._templated:
            if method in methods:
                found = regex.fullmatch(path)
                if found is not None:
                    return Match(templated, found.groupdict())
        return None


def _escape_template(template: str) -> str:
    """Escape a template for a regex, keeping its `{name}` placeholders."""
    pieces = _PARAM.split(template)
    escaped = [
        re.escape(piece) if index % 2 == 0 else "{" + piece + "}"
        for index, piece in enumerate(pieces)
    ]
    return "".join(escaped)
