"""Reading a request body up to a cap, and giving the app exactly what was read, again."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from cachegate.types import Message, Receive, Scope


@dataclass(slots=True)
class RequestBody:
    """The messages read so far; `complete` when the whole body is in them."""

    messages: list[Message]
    complete: bool
    too_large: bool

    @property
    def body(self) -> bytes:
        """The body bytes read."""
        messages = self.messages
        if len(messages) == 1 and messages[0]["type"] == "http.request":  # the common case
            return bytes(messages[0].get("body", b""))
        return b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")

    def receive_again(self, receive: Receive) -> Receive:
        """A `receive` that yields every message read, in order, then the original's."""
        pending = list(self.messages)

        async def again() -> Message:
            if pending:
                return pending.pop(0)
            return await receive()

        return again

    def rerun(self) -> Receive:
        """A `receive` for a background re-run: the body, then nothing until cancelled."""
        pending = list(self.messages)

        async def again() -> Message:
            if pending:
                return pending.pop(0)
            await asyncio.Event().wait()
            return {"type": "http.disconnect"}

        return again


async def read_body(receive: Receive, max_bytes: int) -> RequestBody:
    """Read `http.request` messages until the body ends, the cap is passed or the client leaves."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return RequestBody(messages, complete=False, too_large=False)
        size += len(message.get("body", b""))
        if size > max_bytes:
            return RequestBody(messages, complete=False, too_large=True)
        if not message.get("more_body", False):
            return RequestBody(messages, complete=True, too_large=False)


def declares_no_body(scope: Scope) -> bool:
    """Whether an HTTP/1 request says it has no body: no `Transfer-Encoding`, and no
    `Content-Length` but 0. Its body is then empty (RFC 9112, 6.3), known without reading it.
    Any other version may send a body without saying so (HTTP/2 data frames)."""
    if scope.get("http_version") not in ("1.1", "1.0"):
        return False
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return False
    return True


def empty_body() -> RequestBody:
    """The body of a request that declares none: the one message a server sends for it."""
    return RequestBody([{"type": "http.request", "body": b"", "more_body": False}], True, False)
