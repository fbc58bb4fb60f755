"""Recording a fresh ASGI response, deciding if it may be stored, and replaying a stored one."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

HEADER = b"x-cachegate"
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
_NOT_STORED = HOP_BY_HOP | {b"content-length", HEADER, b"date"}
_NO_STORE_RESPONSE = frozenset({"no-store", "private", "no-cache"})
_NO_CACHE_REQUEST = frozenset({"no-store", "no-cache"})


def cache_control(headers: Headers) -> set[str]:
    """The lower-cased directive names of every `Cache-Control` header (`"no-cache, no-store"`)."""
    return set(_directives(headers))


def _directives(headers: Headers) -> dict[str, str]:
    """Every `Cache-Control` directive, lower-cased, with its value (`""` without one)."""
    directives: dict[str, str] = {}
    for name, value in headers:
        if name.lower() == b"cache-control":
            for part in value.decode("latin-1").split(","):
                directive, _, argument = part.partition("=")
                directive = directive.strip().lower()
                if directive:
                    directives.setdefault(directive, argument.strip().strip('"'))
    return directives


def _expired(value: bytes) -> bool:
    """Whether an `Expires` value is in the past; an invalid date counts as past (RFC 9111)."""
    try:
        when = parsedate_to_datetime(value.decode("latin-1"))
    except (TypeError, ValueError, IndexError):
        return True
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when <= datetime.now(UTC)


def _response_refuses_storage(headers: Headers) -> bool:
    """Whether the app said "do not keep this": `no-store`, `private`, `no-cache`, a zero
    `max-age`/`s-maxage`, `Pragma: no-cache` or an `Expires` in the past."""
    directives = _directives(headers)
    if _NO_STORE_RESPONSE.intersection(directives):
        return True
    if any(name.lower() == b"pragma" and b"no-cache" in value.lower() for name, value in headers):
        return True
    if "s-maxage" in directives or "max-age" in directives:
        age = directives.get("s-maxage", directives.get("max-age", ""))
        return not age.isdigit() or int(age) == 0
    return any(name.lower() == b"expires" and _expired(value) for name, value in headers)


def request_refuses_cache(headers: Headers) -> bool:
    """Whether a request asks not to be answered from a cache (`no-store` or `no-cache`)."""
    return bool(cache_control(headers) & _NO_CACHE_REQUEST)


def refusal(status: int, headers: Headers) -> str | None:
    """Why a response must not be stored, judged at its start; None if it may be."""
    if status != 200:
        return "status"
    for name, value in headers:
        lowered = name.lower()
        if lowered in (b"set-cookie", b"set-cookie2"):
            return "set_cookie"
        if lowered == b"content-type" and value.lower().startswith(b"text/event-stream"):
            return "streamed"
        if lowered == b"vary":
            return "vary"
    if _response_refuses_storage(headers):
        return "cache_control"
    return None


def storable_headers(headers: Headers) -> tuple[tuple[bytes, bytes], ...]:
    """The headers a hit replays: all but hop-by-hop, length, date and our own."""
    return tuple(
        (name.lower(), value) for name, value in headers if name.lower() not in _NOT_STORED
    )


class ResponseRecorder:
    """Wraps `send`: forwards the app's messages (if `send` is given) and keeps a copy.

    The copy is dropped as soon as the response turns out not to be storable (status, cookie,
    cache-control, `Vary`, a second body chunk, or more than `max_bytes`).
    """

    def __init__(
        self,
        send: Send | None,
        *,
        max_bytes: int,
        header: Callable[[], Awaitable[bytes | None]] | None = None,
    ) -> None:
        self._send = send
        self._max_bytes = max_bytes
        self._header = header
        self.status = 0
        self.headers: Headers = []
        self.started = False
        self.complete = False
        self.reason: str | None = None
        self._chunks: list[bytes] = []
        self._size = 0
        self._streaming = False

    @property
    def body(self) -> bytes:
        """The recorded body (complete only when `storable`)."""
        return b"".join(self._chunks)

    @property
    def storable(self) -> bool:
        """Whether the whole response was recorded and may be stored."""
        return self.complete and self.reason is None

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            await self._start(message)
        elif message["type"] == "http.response.body":
            self._body(message)
        if self._send is not None:
            await self._send(message)

    async def _start(self, message: Message) -> None:
        self.started = True
        self.status = int(message["status"])
        self.headers = list(message.get("headers", []))
        self.reason = refusal(self.status, self.headers)
        if self._header is not None and self.reason != "streamed":
            value = await self._header()
            if value is not None:
                message["headers"] = [*self.headers, (HEADER, value)]

    def _body(self, message: Message) -> None:
        more = bool(message.get("more_body", False))
        if self._streaming or more:
            self._streaming = True
            if more is False:
                self.complete = True
            self._drop("streamed")
            return
        self.complete = True
        if self.reason is None:
            chunk = bytes(message.get("body", b""))
            self._size += len(chunk)
            if self._size > self._max_bytes:
                self._drop("too_large")
            else:
                self._chunks.append(chunk)

    def _drop(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self._chunks.clear()


async def replay(
    send: Send, status: int, headers: tuple[tuple[bytes, bytes], ...], body: bytes, header: bytes
) -> None:
    """Send a stored response with a correct `Content-Length` and our header."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                *headers,
                (b"content-length", str(len(body)).encode("ascii")),
                (HEADER, header),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


def add_header(send: Send, value: bytes) -> Send:
    """Wrap `send` so the response start carries `X-CacheGate: value`."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), (HEADER, value)]
        await send(message)

    return wrapped
