"""Route policies: which requests are cached, and how a request maps to a scope and key material.

Scope and key material come from extractors: plain functions of a `RequestView`. The helpers
`header`, `path_param`, `query_param` and `body_field` cover the common cases; any callable works
(tenant from the authenticated user, for instance).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cachegate.keys import Normalization
from cachegate.shadow import Comparator, ExactComparator

Headers = list[tuple[bytes, bytes]]


class BadRequest(Exception):
    """The request cannot be keyed; it passes through uncached with `reason` counted."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RequestView:
    """What extractors see of a request: method, path, parameters, headers and the read body."""

    __slots__ = ("_json", "body", "headers", "method", "path", "path_params", "query_string")

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
    ) -> None:
        self.method = method
        self.path = path
        self.path_params = path_params
        self.headers = headers
        self.query_string = query_string
        self.body = body
        self._json: Any = self._UNPARSED

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), decoded as Latin-1."""
        wanted = name.lower().encode("latin-1")
        for key, value in self.headers:
            if key.lower() == wanted:
                return value.decode("latin-1")
        return None

    def query(self, name: str) -> str | None:
        """The first value of query parameter `name`."""
        from urllib.parse import parse_qsl

        for key, value in parse_qsl(self.query_string.decode("latin-1"), keep_blank_values=True):
            if key == name:
                return value
        return None

    def json(self) -> Any:
        """The body parsed as UTF-8 JSON, once; `BadRequest` if it is not."""
        if self._json is self._UNPARSED:
            try:
                text = self.body.decode("utf-8")
            except UnicodeDecodeError as error:
                raise BadRequest("invalid_utf8") from error
            try:
                self._json = json.loads(text)
            except ValueError as error:
                raise BadRequest("invalid_json") from error
        return self._json


Extractor = Callable[[RequestView], object]
"""Returns a value of the request, or None when the request does not have it."""


def header(name: str) -> Extractor:
    """The value of a request header (e.g. `X-Workspace-ID`)."""
    return lambda request: request.header(name)


def path_param(name: str) -> Extractor:
    """A path parameter of the route template (e.g. `session_id` of `/sessions/{session_id}`)."""
    return lambda request: request.path_params.get(name)


def query_param(name: str) -> Extractor:
    """A query-string parameter."""
    return lambda request: request.query(name)


def field_at(document: object, parts: Sequence[str]) -> object:
    """The value at a path of keys in a JSON document, or None where the path does not lead."""
    value = document
    for part in parts:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def scope_text(value: object) -> str | None:
    """A tenant or subject as text: a non-empty string or an int; None when absent or empty.

    Raises `TypeError` for any other value, which the caller decides how to treat.
    """
    if value is None:
        return None
    if isinstance(value, str):
        return value or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise TypeError("a tenant or subject must be a string or an int")


def body_field(path: str) -> Extractor:
    """A field of the JSON body; dots descend into objects (`"filters.client"`)."""
    parts = tuple(path.split("."))
    return lambda request: field_at(request.json(), parts)


@dataclass(frozen=True)
class Policy:
    """How one route is cached.

    `route` is a path template (`/ai/query`, `/items/{item_id}`); `tenant` is required and a
    request without one bypasses; `subject` narrows the scope (a client); `key` names the values
    that make two requests the same question. Text in key material is normalised by
    `normalization` (exact by default). `ttl` is absolute: reads never extend it.
    `rerun_safe` says the route has no side effects, so shadow checks may compute it twice.
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

    def __post_init__(self) -> None:
        if self.ttl <= 0:
            raise ValueError(f"{self.route}: ttl must be positive")
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
