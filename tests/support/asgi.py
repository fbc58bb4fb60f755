"""A raw ASGI driver: sends a request as many `http.request` messages, then `http.disconnect`
(after the response is complete, as servers do), and records everything the app sends.

And `RecordingApp`, a raw ASGI app that records exactly which messages it received.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]


@dataclass
class Exchange:
    """What the app sent back."""

    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    messages: list[Message] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode()
        values = [v.decode("latin-1") for k, v in self.headers if k.lower() == wanted]
        assert len(values) <= 1, f"header {name} sent {len(values)} times"
        return values[0] if values else None

    def header_values(self, name: str) -> list[bytes]:
        wanted = name.lower().encode()
        return [v for k, v in self.headers if k.lower() == wanted]

    @property
    def cachegate(self) -> str | None:
        return self.header("x-cachegate")

    def json(self) -> Any:
        return json.loads(self.body)


def http_scope(
    method: str = "POST",
    path: str = "/ai/query",
    headers: Sequence[tuple[bytes, bytes]] = (),
    query_string: bytes = b"",
) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query_string,
        "headers": list(headers),
        "client": ("127.0.0.1", 12345),
        "server": ("testserver", 80),
    }


async def drive(
    app: ASGIApp,
    *,
    method: str = "POST",
    path: str = "/ai/query",
    headers: Sequence[tuple[bytes, bytes]] = (),
    chunks: Sequence[bytes] = (b"",),
    query_string: bytes = b"",
    on_send: Callable[[Message], Awaitable[None]] | None = None,
    scope: dict[str, Any] | None = None,
    receive: Receive | None = None,
    send: Send | None = None,
) -> Exchange:
    """Run one request through `app`; `chunks` become one `http.request` message each."""
    exchange = Exchange()
    done = asyncio.Event()
    pending = [
        {"type": "http.request", "body": chunk, "more_body": index < len(chunks) - 1}
        for index, chunk in enumerate(chunks)
    ]

    async def default_receive() -> Message:
        if pending:
            return pending.pop(0)
        await done.wait()
        return {"type": "http.disconnect"}

    async def default_send(message: Message) -> None:
        if on_send is not None:
            await on_send(message)
        exchange.messages.append(message)
        if message["type"] == "http.response.start":
            exchange.status = int(message["status"])
            exchange.headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            exchange.body += bytes(message.get("body", b""))
            if not message.get("more_body", False):
                done.set()

    await app(
        scope if scope is not None else http_scope(method, path, headers, query_string),
        receive if receive is not None else default_receive,
        send if send is not None else default_send,
    )
    return exchange


class RecordingApp:
    """A raw ASGI app: reads the whole body, records every message received, answers JSON
    with the body's SHA-256 and length, then (optionally) waits for the next message."""

    def __init__(self, *, wait_for_disconnect: bool = True) -> None:
        self.wait_for_disconnect = wait_for_disconnect
        self.calls = 0
        self.received: list[list[Message]] = []
        self.after_body: list[Message] = []
        self.receives: list[Receive] = []
        self.sends: list[Send] = []
        self.scopes: list[MutableMapping[str, Any]] = []

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        self.calls += 1
        self.receives.append(receive)
        self.sends.append(send)
        self.scopes.append(scope)
        messages: list[Message] = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        self.received.append(messages)
        body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")
        payload = json.dumps(
            {"sha256": hashlib.sha256(body).hexdigest(), "length": len(body), "call": self.calls}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": payload})
        if self.wait_for_disconnect:
            self.after_body.append(await receive())
