"""Recording a fresh ASGI response, deciding if it may be stored, and sending a stored one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from cachegate.policy import Streams
from cachegate.types import Headers, Message, Receive, Send
from cachegate.vocabulary import UncacheableReason

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


def _directives(headers: Headers) -> dict[str, str]:
    """Every `Cache-Control` directive, lower-cased, with its value (`""` without one)."""
    directives: dict[str, str] = {}
    for name, value in headers:
        if name.lower() == b"cache-control":
            _add_directives(value, directives)
    return directives


def _add_directives(value: bytes, directives: dict[str, str]) -> None:
    """Add the directives of one `Cache-Control` value (the first of a name wins)."""
    for part in value.decode("latin-1").split(","):
        directive, _, argument = part.partition("=")
        directive = directive.strip().lower()
        if directive:
            directives.setdefault(directive, argument.strip().strip('"'))


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
    """Whether a request asks not to be answered from a cache (`no-store` or `no-cache`).

    Request header names are read as Starlette reads them: lowercased, as ASGI servers send
    them (a response's are read in any case).
    """
    for name, value in headers:
        if name == b"cache-control":
            directives: dict[str, str] = {}
            _add_directives(value, directives)
            if not _NO_CACHE_REQUEST.isdisjoint(directives):
                return True
    return False


def refusal(status: int, headers: Headers, *, streams: bool = False) -> UncacheableReason | None:
    """Why a response must not be stored, judged at its start; None if it may be.

    An event stream is refused (`streamed`) unless the policy caches `streams`.
    """
    if status != 200:
        return UncacheableReason.STATUS
    for name, value in headers:
        lowered = name.lower()
        if lowered in (b"set-cookie", b"set-cookie2"):
            return UncacheableReason.SET_COOKIE
        if not streams and lowered == b"content-type" and _event_stream(value):
            return UncacheableReason.STREAMED
        if lowered == b"vary":
            return UncacheableReason.VARY
    if _response_refuses_storage(headers):
        return UncacheableReason.CACHE_CONTROL
    return None


def _event_stream(content_type: bytes) -> bool:
    return content_type.lower().startswith(b"text/event-stream")


def storable_headers(headers: Headers) -> tuple[tuple[bytes, bytes], ...]:
    """The headers a hit sends: all but hop-by-hop, length, date and our own."""
    return tuple(
        (name.lower(), value) for name, value in headers if name.lower() not in _NOT_STORED
    )


class ResponseRecorder:
    """Wraps `send`: forwards the app's messages (if `send` is given) and keeps a copy.

    The copy is dropped as soon as the response turns out not to be storable (status, cookie,
    cache-control, `Vary`, or more than `max_bytes`). A response in several body messages is a
    stream: without `streams` it is refused (`streamed`); with them every chunk is kept with its
    time offset from the response start, and only a stream that completed normally (`finish`)
    is storable.
    """

    def __init__(
        self,
        send: Send | None,
        *,
        max_bytes: int,
        header: bytes | None = None,
        streams: Streams | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._send = send
        self._max_bytes = max_bytes
        self._header = header
        self._streams = streams
        self._clock = clock
        self.status = 0
        self.headers: Headers = []
        self.started = False
        self.complete = False
        self.disconnected = False
        self.reason: UncacheableReason | None = None
        self._chunks: list[bytes] = []
        self._offsets: list[int] = []
        self._size = 0
        self._streaming = False
        self._began = 0.0

    @property
    def body(self) -> bytes:
        """The recorded body (complete only when `storable`)."""
        return b"".join(self._chunks)

    @property
    def streaming(self) -> bool:
        """Whether the response came in more than one body message (or is an event stream)."""
        return self._streaming

    @property
    def chunks(self) -> tuple[tuple[int, int], ...]:
        """A stored stream's chunks as (microseconds from the start, length); empty otherwise."""
        if not self._streaming:
            return ()
        return tuple(zip(self._offsets, map(len, self._chunks), strict=True))

    @property
    def storable(self) -> bool:
        """Whether the whole response was recorded and may be stored."""
        return self.complete and self.reason is None

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self._start(message)
        elif message["type"] == "http.response.body":
            self._body(message)
        if self._send is not None:
            try:
                await self._send(message)
            except OSError:
                self.disconnected = True
                self._drop(
                    UncacheableReason.STREAM_DISCONNECTED
                    if self._streaming
                    else UncacheableReason.ERROR
                )
                raise

    def watch(self, receive: Receive) -> Receive:
        """A `receive` that notes a client disconnect seen before the response completed."""

        async def watched() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect" and not self.complete:
                self.disconnected = True
            return message

        return watched

    def finish(self, error: BaseException | None = None) -> None:
        """Judge the response once the app has returned (or raised `error`)."""
        if not self._streaming:
            return
        if error is not None:
            self._drop(UncacheableReason.STREAM_ERROR)
        elif self.disconnected and not self.complete:
            self._drop(UncacheableReason.STREAM_DISCONNECTED)
        elif not self.complete:
            self._drop(UncacheableReason.STREAM_INCOMPLETE)
        elif self._streams is not None and not self._streams.terminated(self.body):
            self._drop(UncacheableReason.STREAM_UNTERMINATED)

    def _start(self, message: Message) -> None:
        self.started = True
        self._began = self._clock()
        self.status = int(message["status"])
        self.headers = list(message.get("headers", []))
        self.reason = refusal(self.status, self.headers, streams=self._streams is not None)
        if self._streams is not None and any(
            name.lower() == b"content-type" and _event_stream(value) for name, value in self.headers
        ):
            self._streaming = True
        if self._header is not None and self.reason is not UncacheableReason.STREAMED:
            message["headers"] = [*self.headers, (HEADER, self._header)]

    def _body(self, message: Message) -> None:
        more = bool(message.get("more_body", False))
        if self.complete:
            return
        if more and not self._streaming:
            self._streaming = True
            if self._streams is None:
                self._drop(UncacheableReason.STREAMED)
        if not more:
            self.complete = True
        if self.reason is not None:
            return
        chunk = bytes(message.get("body", b""))
        self._size += len(chunk)
        if self._size > self._max_bytes:
            self._drop(
                UncacheableReason.STREAM_TOO_LARGE
                if self._streaming
                else UncacheableReason.TOO_LARGE
            )
            return
        self._chunks.append(chunk)
        self._offsets.append(round((self._clock() - self._began) * 1_000_000))

    def _drop(self, reason: UncacheableReason) -> None:
        if self.reason is None:
            self.reason = reason
        self._chunks.clear()
        self._offsets.clear()


async def send_entry(
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


async def send_stream(
    send: Send,
    status: int,
    headers: Sequence[tuple[bytes, bytes]],
    pieces: Sequence[tuple[int, bytes]],
    header: bytes,
    streams: Streams,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Send a stored stream in its recorded chunks (no `Content-Length`: it streams), waiting
    between chunks as the policy's pacing says; the last chunk ends the body."""
    await send(
        {"type": "http.response.start", "status": status, "headers": [*headers, (HEADER, header)]}
    )
    previous = pieces[0][0] if pieces else 0
    for index, (offset, chunk) in enumerate(pieces):
        delay = streams.delay((offset - previous) / 1_000_000)
        previous = offset
        if delay > 0:
            await sleep(delay)
        more = index < len(pieces) - 1
        await send({"type": "http.response.body", "body": chunk, "more_body": more})
    if not pieces:
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def answer_content(body: bytes, headers: Sequence[tuple[bytes, bytes]]) -> bytes:
    """What a comparison looks at: for an event stream the data of its events (each `data:`
    line's payload, joined by newlines), so framing, comments and `id:`/`retry:` lines do not
    count; any other body as it is."""
    if not any(name.lower() == b"content-type" and _event_stream(v) for name, v in headers):
        return body
    payloads = []
    for line in body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"):
        if line == b"data" or line.startswith(b"data:"):
            payload = line[5:]
            payloads.append(payload[1:] if payload.startswith(b" ") else payload)
    return b"\n".join(payloads)


def add_header(send: Send, value: bytes) -> Send:
    """Wrap `send` so the response start carries `X-CacheGate: value`. The wrapper returns
    `send`'s awaitable rather than awaiting it: no coroutine of its own per message."""

    def wrapped(message: Message) -> Awaitable[None]:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), (HEADER, value)]
        return send(message)

    return wrapped
