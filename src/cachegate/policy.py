"""Route policies: which requests are cached, and how a request maps to a scope and key material.

Scope and key material come from extractors: plain functions of a `RequestView`. The helpers
`authenticated`, `trusted_header`, `header`, `path_param`, `query_param` and `body_field` cover
the common cases; any callable works.

A hit is served before the app runs, so an extractor must read the request exactly as the app
does, or make it bypass: a value that occurs twice, an empty string, a value of the wrong type
or a JSON body that is not an object is never guessed at (`BadRequest`, counted by reason).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar
from urllib.parse import parse_qsl

from cachegate.comparators import Comparator, ExactComparator
from cachegate.keys import Normalization

Headers = list[tuple[bytes, bytes]]


class BadRequest(Exception):
    """The request cannot be keyed; it passes through uncached with `reason` counted."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Ambiguous(BadRequest):
    """A query parameter or header the cache reads occurs more than once.

    Frameworks disagree on which occurrence counts (Starlette's query params take the last, its
    headers the first), so the cache never picks one. `values` are every occurrence, so a write
    can invalidate all the scopes it might have touched.
    """

    def __init__(self, values: Sequence[str]) -> None:
        super().__init__("ambiguous_value")
        self.values = tuple(values)


class RequestView:
    """What extractors see of a request: method, path, parameters, headers, the read body, and
    the ASGI scope (for what an authentication middleware outside CacheGate put there)."""

    __slots__ = (
        "_json",
        "body",
        "headers",
        "method",
        "path",
        "path_params",
        "query_string",
        "scope",
    )

    _UNPARSED: Any = object()

    def __init__(
        self,
        *,
        method: str,
        path: str,
        path_params: Mapping[str, str],
        headers: Headers,
        query_string: bytes,
        body: bytes,
        scope: Mapping[str, Any] | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.path_params = path_params
        self.headers = headers
        self.query_string = query_string
        self.body = body
        self.scope: Mapping[str, Any] = {} if scope is None else scope
        self._json: Any = self._UNPARSED

    def header(self, name: str) -> str | None:
        """Header `name` (case-insensitive, Latin-1); `Ambiguous` if it occurs more than once."""
        wanted = name.lower().encode("latin-1")
        values = [value.decode("latin-1") for key, value in self.headers if key.lower() == wanted]
        if len(values) > 1:
            raise Ambiguous(values)
        return values[0] if values else None

    def query(self, name: str) -> str | None:
        """Query parameter `name`; `Ambiguous` if it occurs more than once."""
        values = [
            value
            for key, value in parse_qsl(self.query_string.decode("latin-1"), keep_blank_values=True)
            if key == name
        ]
        if len(values) > 1:
            raise Ambiguous(values)
        return values[0] if values else None

    def json(self) -> Any:
        """The body parsed as UTF-8 JSON, once; `BadRequest` if it is not JSON.

        Like FastAPI, a body is JSON only without a `Content-Type` or with `application/json`
        or `application/*+json`: a `text/plain` body the app would refuse is never keyed.
        """
        if self._json is self._UNPARSED:
            if not _json_content_type(self.header("content-type")):
                raise BadRequest("not_json")
            try:
                text = self.body.decode("utf-8")
            except UnicodeDecodeError as error:
                raise BadRequest("invalid_utf8") from error
            try:
                self._json = json.loads(text)
            except (ValueError, RecursionError) as error:
                raise BadRequest("invalid_json") from error
        return self._json


def _json_content_type(value: str | None) -> bool:
    if value is None:
        return True
    media = value.split(";", 1)[0].strip().lower()
    main, _, sub = media.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


Extractor = Callable[[RequestView], object]
"""Returns a value of the request, or None when the request does not have it."""

Guard = Callable[[RequestView], "bool | Awaitable[bool]"]
"""Whether the app would accept the request as it is (auth, validation); False means bypass."""


class ClientValue:
    """An extractor of a value the client chooses (a header, query or path parameter, a body
    field). Fine as key material or subject; as a tenant only with a `Policy.guard`."""

    __slots__ = ("name",)
    helper: ClassVar[str] = ""
    """The name of the function that makes it, for messages."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, request: RequestView) -> object:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{self.helper}({self.name!r})"


class _Header(ClientValue):
    __slots__ = ()
    helper = "header"

    def __call__(self, request: RequestView) -> str | None:
        return request.header(self.name)


class _Query(ClientValue):
    __slots__ = ()
    helper = "query_param"

    def __call__(self, request: RequestView) -> str | None:
        return request.query(self.name)


class _PathParam(ClientValue):
    __slots__ = ()
    helper = "path_param"

    def __call__(self, request: RequestView) -> str | None:
        return request.path_params.get(self.name)


class _BodyField(ClientValue):
    __slots__ = ("_parts",)
    helper = "body_field"

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._parts = tuple(name.split("."))

    def __call__(self, request: RequestView) -> object:
        document = request.json()
        if not isinstance(document, dict):
            raise BadRequest("body_not_object")
        return field_at(document, self._parts)


def header(name: str) -> Extractor:
    """The value of a request header, as the client sent it.

    A raw client header is not an identity, so a `Policy` refuses it as its tenant without a
    guard: use `authenticated`, or `trusted_header` when a trusted proxy sets the header.
    """
    return _Header(name)


def query_param(name: str) -> Extractor:
    """A query-string parameter."""
    return _Query(name)


def path_param(name: str) -> Extractor:
    """A path parameter of the route template (e.g. `session_id` of `/sessions/{session_id}`)."""
    return _PathParam(name)


def body_field(path: str) -> Extractor:
    """A field of the JSON body; dots descend into objects (`"filters.client"`)."""
    return _BodyField(path)


def trusted_header(name: str) -> Extractor:
    """A header a trusted proxy in front of the app sets, overwriting what the client sent."""
    return lambda request: request.header(name)


def authenticated(attribute: str) -> Extractor:
    """An attribute of the verified user (`scope["user"]`, set by Starlette's
    `AuthenticationMiddleware` placed *outside* CacheGate). An unauthenticated request has no
    value (it bypasses); a request with no authentication middleware before it bypasses too."""

    def extract(request: RequestView) -> object:
        if "user" not in request.scope:
            raise BadRequest("no_authentication")
        user = request.scope["user"]
        if not getattr(user, "is_authenticated", False):
            return None
        return getattr(user, attribute)

    return extract


def field_at(document: object, parts: Sequence[str]) -> object:
    """The value at a path of keys in a JSON document; None where a key is missing.

    `BadRequest("body_not_object")` where the path runs into something that is not an object
    (a body `[1, 2]` or `"text"` never reads like a body without the field).
    """
    value = document
    for part in parts:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise BadRequest("body_not_object")
        value = value.get(part)
    return value


_INTEGER = re.compile(r"-?[0-9]+")


def as_int(extractor: Extractor) -> Extractor:
    """A coercion for an integer id (a FastAPI `client_id: int`): JSON `1` and `"01"` are one
    value, `"1"`. Anything else with a value (`"1.0"`, `true`, `" 1"`) bypasses."""

    def extract(request: RequestView) -> object:
        value = extractor(request)
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, str) and _INTEGER.fullmatch(value):
            return str(int(value))
        raise BadRequest("invalid_value")

    return extract


def scope_text(value: object) -> str | None:
    """A tenant or subject as text: a non-empty string; None when absent (None).

    Anything else is ambiguous and raises `BadRequest`: an empty string is not "absent"
    (`empty_value`), and a number or an object is not an id the app reads the same way
    (`invalid_value`; map numbers with a coercion such as `as_int`).
    """
    if value is None:
        return None
    if isinstance(value, str):
        if value:
            return value
        raise BadRequest("empty_value")
    raise BadRequest("invalid_value")


class Pacing(StrEnum):
    """How a cached stream is replayed: `burst` as fast as possible, `paced` at the recorded
    inter-chunk delays (scaled and capped), so a UI that renders tokens behaves as with a fresh
    answer."""

    BURST = "burst"
    PACED = "paced"


@dataclass(frozen=True)
class Streams:
    """Whether and how a policy caches streamed responses (SSE, chunked JSON lines).

    A stream is stored only when it completed normally: the app sent its final body message, the
    client stayed, the app did not raise, the stream fit the entry size limit and, with
    `terminal` set (e.g. `b"data: [DONE]"`), its body ends with that event. A hit replays the
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
        """How long a paced replay waits for a recorded gap between two chunks."""
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
    that make two requests the same question. Text in key material is normalised by
    `normalization` (exact by default). `ttl` is absolute: reads never extend it.
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


class Router:
    """Finds the policy or write rule of a request: a dict lookup for static paths."""

    def __init__(self, rules: Iterable[Policy | WriteRule]) -> None:
        self._static: dict[tuple[str, str], Policy | WriteRule] = {}
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
                self._static[(method, rule.route)] = rule

    def match(self, method: str, path: str) -> Match | None:
        """The rule for `method path`, or None (the request is not CacheGate's business)."""
        rule = self._static.get((method, path))
        if rule is not None:
            return Match(rule, {})
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
