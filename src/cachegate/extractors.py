"""Extractors: how a request's tenant, subject and key material are read, exactly as the app
reads them or not at all.

Extractors are plain functions of a `RequestView`. The helpers `authenticated`,
`trusted_header`, `header`, `path_param`, `query_param` and `body_field` cover the common
cases; any callable works. A hit is served before the app runs, so a value that occurs twice,
an empty string, a value of the wrong type or a JSON body that is not an object is never
guessed at (`BadRequest`, counted by reason).
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import unquote

from cachegate.types import Headers
from cachegate.vocabulary import BypassReason


class BadRequest(Exception):
    """The request cannot be keyed; it passes through uncached with `reason` counted."""

    def __init__(self, reason: BypassReason) -> None:
        super().__init__(reason)
        self.reason = reason


class Ambiguous(BadRequest):
    """A query parameter or header the cache reads occurs more than once.

    Frameworks disagree on which occurrence counts (Starlette's query params take the last, its
    headers the first), so the cache never picks one. `values` are every occurrence, so a write
    can invalidate all the scopes it might have touched.
    """

    def __init__(self, values: Sequence[str]) -> None:
        super().__init__(BypassReason.AMBIGUOUS_VALUE)
        self.values = tuple(values)


class RequestView:
    """What extractors see of a request: method, path, parameters, headers, the read body, and
    the ASGI scope (for what an authentication middleware outside CacheGate put there)."""

    __slots__ = (
        "_json",
        "_query",
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
        self._query: dict[str, list[str]] | None = None

    @classmethod
    def of(
        cls, scope: Mapping[str, Any], path_params: Mapping[str, str], body: bytes
    ) -> RequestView:
        """The view of an ASGI HTTP request (with `body`, its body as read so far)."""
        view = cls.__new__(cls)  # the middleware's path: no keyword parsing per request
        view.method = scope["method"]
        view.path = scope["path"]
        view.path_params = path_params
        view.headers = scope.get("headers", [])
        view.query_string = scope.get("query_string", b"")
        view.body = body
        view.scope = scope
        view._json = cls._UNPARSED
        view._query = None
        return view

    def header(self, name: str) -> str | None:
        """Header `name` (any case; Latin-1); `Ambiguous` if it occurs more than once.

        Read as Starlette's `Headers` reads it: ASGI servers send header names lowercased, and
        a name sent otherwise is seen neither by the app nor here.
        """
        return self.raw_header(name.lower().encode("latin-1"))

    def raw_header(self, wanted: bytes) -> str | None:
        """`header` by its lowercased Latin-1 name, as the extractors keep it."""
        found = None
        for key, value in self.headers:
            if key == wanted:
                if found is not None:
                    raise Ambiguous([v.decode("latin-1") for k, v in self.headers if k == wanted])
                found = value
        return None if found is None else found.decode("latin-1")

    def query(self, name: str) -> str | None:
        """Query parameter `name`; `Ambiguous` if it occurs more than once. The query string is
        parsed once per request, however many extractors read it."""
        if self._query is None:
            self._query = query_values(self.query_string.decode("latin-1"))
        values = self._query.get(name)
        if values is None:
            return None
        if len(values) > 1:
            raise Ambiguous(values)
        return values[0]

    def json(self) -> Any:
        """The body parsed as UTF-8 JSON, once; `BadRequest` if it is not JSON.

        Like FastAPI, a body is JSON only without a `Content-Type` or with `application/json`
        or `application/*+json`: a `text/plain` body the app would refuse is never keyed.
        """
        if self._json is self._UNPARSED:
            if not _json_content_type(self.raw_header(b"content-type")):
                raise BadRequest(BypassReason.NOT_JSON)
            try:
                text = self.body.decode("utf-8")
            except UnicodeDecodeError as error:
                raise BadRequest(BypassReason.INVALID_UTF8) from error
            try:
                self._json = json.loads(text)
            except (ValueError, RecursionError) as error:
                raise BadRequest(BypassReason.INVALID_JSON) from error
        return self._json


def query_values(query: str) -> dict[str, list[str]]:
    """Each parameter's values, in order, as Starlette's `QueryParams` reads them (the standard
    library's `parse_qsl` with blank values kept), with no unquoting where there is nothing to
    unquote."""
    values: dict[str, list[str]] = {}
    for pair in query.split("&"):
        if not pair:
            continue
        name, _, value = pair.partition("=")
        if "%" in name or "+" in name:
            name = unquote(name.replace("+", " "))
        if "%" in value or "+" in value:
            value = unquote(value.replace("+", " "))
        values.setdefault(name, []).append(value)
    return values


def _json_content_type(value: str | None) -> bool:
    if value is None or value == "application/json":
        return True
    media = value.split(";", 1)[0].strip().lower()
    main, _, sub = media.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


Extractor = Callable[[RequestView], object]
"""Returns a value of the request, or None when the request does not have it."""

Guard = Callable[[RequestView], "bool | Awaitable[bool]"]
"""Whether the app would accept the request as it is (auth, validation); False means bypass."""


async def guard_refusal(guard: Guard, request: RequestView) -> BypassReason | None:
    """Why a policy's guard refuses the request (the app decides), or None if it passes:
    anything but `True`, or an exception, refuses."""
    try:
        verdict = guard(request)
        if inspect.isawaitable(verdict):
            verdict = await verdict
    except Exception:
        return BypassReason.GUARD_ERROR
    return None if verdict is True else BypassReason.GUARD_REFUSED


class ClientValue:
    """An extractor of a value the client chooses (a header, query or path parameter, a body
    field). Fine as key material or subject; as a tenant only with a `Policy.guard`."""

    __slots__ = ("name",)
    helper: ClassVar[str] = ""
    """The name of the function that makes it, for messages."""
    reads_body: ClassVar[bool] = False

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, request: RequestView) -> object:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{self.helper}({self.name!r})"


class _Header(ClientValue):
    __slots__ = ("_raw",)
    helper = "header"

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._raw = header_name(name)

    def __call__(self, request: RequestView) -> str | None:
        return request.raw_header(self._raw)


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
    reads_body = True

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._parts = tuple(name.split("."))

    def __call__(self, request: RequestView) -> object:
        document = request.json()
        if not isinstance(document, dict):
            raise BadRequest(BypassReason.BODY_NOT_OBJECT)
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


class _TrustedHeader:
    __slots__ = ("_raw", "name")
    reads_body: ClassVar[bool] = False

    def __init__(self, name: str) -> None:
        self.name = name
        self._raw = header_name(name)

    def __call__(self, request: RequestView) -> str | None:
        return request.raw_header(self._raw)


def header_name(name: str) -> bytes:
    """A header's name as ASGI servers send it (lowercased Latin-1); `ValueError` if it
    cannot be one, at configuration rather than on every request."""
    try:
        return name.lower().encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"a header name is Latin-1 text, not {name!r}") from None


class _Authenticated:
    __slots__ = ("attribute",)
    reads_body: ClassVar[bool] = False

    def __init__(self, attribute: str) -> None:
        self.attribute = attribute

    def __call__(self, request: RequestView) -> object:
        if "user" not in request.scope:
            raise BadRequest(BypassReason.NO_AUTHENTICATION)
        user = request.scope["user"]
        if not getattr(user, "is_authenticated", False):
            return None
        return getattr(user, self.attribute)


def trusted_header(name: str) -> Extractor:
    """A header a trusted proxy in front of the app sets, overwriting what the client sent."""
    return _TrustedHeader(name)


def authenticated(attribute: str) -> Extractor:
    """An attribute of the verified user (`scope["user"]`, set by Starlette's
    `AuthenticationMiddleware` placed *outside* CacheGate). An unauthenticated request has no
    value (it bypasses); a request with no authentication middleware before it bypasses too."""
    return _Authenticated(attribute)


def reads_body(extractor: Extractor) -> bool:
    """Whether `extractor` may read the request body. Only the helpers that never do say no,
    so a request whose layer is off is passed on without its body being read first."""
    return bool(getattr(extractor, "reads_body", True))


@dataclass(frozen=True, slots=True)
class Reads:
    """What an extractor reads of a request besides its method and path parameters: the query
    string (`query`), the body (`body`) and the headers named in `headers` (lowercased
    Latin-1)."""

    query: bool = False
    body: bool = False
    headers: tuple[bytes, ...] = ()

    def __or__(self, other: Reads) -> Reads:
        headers = self.headers + tuple(h for h in other.headers if h not in self.headers)
        return Reads(self.query or other.query, self.body or other.body, headers)


def request_reads(extractor: Extractor) -> Reads | None:
    """What `extractor` reads of a request, when it is a helper that reads only the query
    string, headers, path parameters or the body (through `as_int` too); None for anything else
    (the scope, your own function, a subclass), which may read anything. A body field reads
    the `Content-Type` too: it says whether the body is JSON."""
    kind = type(extractor)
    if kind is _Query:
        return Reads(query=True)
    if kind is _PathParam:
        return Reads()
    if kind is _BodyField:
        return Reads(body=True, headers=(b"content-type",))
    if isinstance(extractor, _Header | _TrustedHeader) and kind in (_Header, _TrustedHeader):
        return Reads(headers=(extractor._raw,))
    if isinstance(extractor, _AsInt) and kind is _AsInt:
        return request_reads(extractor.extractor)
    return None


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
            raise BadRequest(BypassReason.BODY_NOT_OBJECT)
        value = value.get(part)
    return value


_INTEGER = re.compile(r"-?[0-9]+")


def as_int(extractor: Extractor) -> Extractor:
    """A coercion for an integer id (a FastAPI `client_id: int`): JSON `1` and `"01"` are one
    value, `"1"`. Anything else with a value (`"1.0"`, `true`, `" 1"`) bypasses."""

    return _AsInt(extractor)


class _AsInt:
    __slots__ = ("extractor", "reads_body")

    def __init__(self, extractor: Extractor) -> None:
        self.extractor = extractor
        self.reads_body = reads_body(extractor)

    def __call__(self, request: RequestView) -> object:
        value = self.extractor(request)
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, str) and _INTEGER.fullmatch(value):
            return str(int(value))
        raise BadRequest(BypassReason.INVALID_VALUE)


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
        raise BadRequest(BypassReason.EMPTY_VALUE)
    raise BadRequest(BypassReason.INVALID_VALUE)
