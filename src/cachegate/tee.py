"""The live tee: identical requests that arrive while a leader's stream is being produced receive
its chunks as they are produced, instead of waiting for the end or computing again.

A live stream keeps its chunks (a follower that joins late starts at the first one) up to
`max_bytes`; past that, or when its leader fails or is cut off, it fails and drops them, so the
memory of one live stream is bounded. A follower of a failed stream computes on its own; what
it already forwarded is skipped in its own fresh answer (`Resume`), which must begin with the
same bytes or the follower's response is aborted: a client never sees two answers spliced.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from enum import Enum

from cachegate.responses import HEADER, refusal
from cachegate.types import Headers, Message, Send


class State(Enum):
    """Where a live stream is: still produced, completed normally, or failed."""

    LIVE = "live"
    DONE = "done"
    FAILED = "failed"


class LeaderFailed(Exception):
    """The leader's stream failed while a follower relayed it; what the follower already sent."""

    def __init__(self, status: int, started: bool, sent: int, digest: bytes) -> None:
        super().__init__("the leader's stream failed")
        self.status = status
        self.started = started
        self.sent = sent
        self.digest = digest


class StreamDiverged(Exception):
    """A follower's own fresh answer does not begin with what it already sent: aborted."""


class LiveStream:
    """One leader's stream as it is produced: status, headers to send, chunks so far."""

    def __init__(self, status: int, headers: Headers, max_bytes: int) -> None:
        self.status = status
        self.headers = headers
        self.max_bytes = max_bytes
        self.state = State.LIVE
        self._chunks: list[bytes] = []
        self._final: bytes | None = None
        self._size = 0
        self._changed = asyncio.Event()

    @property
    def size(self) -> int:
        """Bytes held for followers."""
        return self._size

    def publish(self, chunk: bytes, *, final: bool) -> None:
        """Add the leader's next body chunk (`final`: its last); too many bytes fail the stream."""
        if self.state is not State.LIVE:
            return
        self._size += len(chunk)
        if self._size > self.max_bytes:
            self.fail()
            return
        if final:
            self._final = chunk
        else:
            self._chunks.append(chunk)
        self._wake()

    def close(self, completed: bool) -> None:
        """End the stream: `completed` normally (followers finish) or not (they fall back)."""
        if self.state is not State.LIVE:
            return
        if completed and self._final is not None:
            self.state = State.DONE
            self._wake()
        else:
            self.fail()

    def fail(self) -> None:
        """The leader failed or was cut off: drop the chunks, release the followers."""
        if self.state is State.LIVE:
            self.state = State.FAILED
            self._chunks, self._final, self._size = [], None, 0
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def follow(self, send: Send, header: bytes) -> None:
        """Forward the stream to `send` chunk for chunk as the leader produces it.

        The response starts with the first chunk; the last one is sent only once the leader's
        stream completed normally. Raises `LeaderFailed` when it did not.
        """
        started, index, sent = False, 0, 0
        digest = hashlib.sha256()
        while True:
            while self.state is not State.FAILED and index < len(self._chunks):
                chunk = self._chunks[index]
                index += 1
                if not started:
                    await self._start(send, header)
                    started = True
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                digest.update(chunk)
                sent += len(chunk)
            if self.state is State.DONE:
                if not started:
                    await self._start(send, header)
                final = self._final if self._final is not None else b""
                await send({"type": "http.response.body", "body": final, "more_body": False})
                return
            if self.state is State.FAILED:
                raise LeaderFailed(self.status, started, sent, digest.digest())
            await self._changed.wait()

    async def _start(self, send: Send, header: bytes) -> None:
        headers = [*self.headers, (HEADER, header)]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})


class LiveStreams:
    """The live streams of a process, by single-flight key."""

    def __init__(self) -> None:
        self._streams: dict[str, LiveStream] = {}

    def __len__(self) -> int:
        return len(self._streams)

    def held_bytes(self) -> int:
        """Bytes of chunks the live streams hold for their followers (each at most its bound)."""
        return sum(stream.size for stream in self._streams.values())

    def get(self, key: str) -> LiveStream | None:
        """The live (or just completed) stream of `key` a new identical request may follow."""
        stream = self._streams.get(key)
        return stream if stream is not None and stream.state is not State.FAILED else None

    def open(self, key: str, status: int, headers: Headers, max_bytes: int) -> LiveStream | None:
        """Register a leader's stream under `key`; None if another one is registered there."""
        if key in self._streams:
            return None
        stream = self._streams[key] = LiveStream(status, headers, max_bytes)
        return stream

    def remove(self, key: str, stream: LiveStream) -> None:
        """Forget `stream` (its entry is stored, or it failed); followers keep their reference."""
        if self._streams.get(key) is stream:
            del self._streams[key]


class Publisher:
    """Wraps a leader's `send`: once the response turns out to stream (a body message with
    `more_body`), asks `open` for a live stream and publishes every chunk the client was sent."""

    def __init__(self, send: Send, open: Callable[[int, Headers], LiveStream | None]) -> None:
        self._send = send
        self._open = open
        self._status = 0
        self._headers: Headers = []
        self._asked = False
        self.stream: LiveStream | None = None

    async def __call__(self, message: Message) -> None:
        await self._send(message)
        if message["type"] == "http.response.start":
            self._status = int(message["status"])
            self._headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            more = bool(message.get("more_body", False))
            if not self._asked and more:
                self._asked = True
                self.stream = self._open(self._status, self._headers)
            if self.stream is not None:
                self.stream.publish(bytes(message.get("body", b"")), final=not more)


class Resume:
    """A follower's `send` for its own fresh answer after the leader failed: the start and the
    first `sent` bytes it already forwarded are swallowed, once checked to be the same (status,
    storable, and the same bytes by digest); anything else raises `StreamDiverged`."""

    def __init__(self, send: Send, failed: LeaderFailed) -> None:
        self._send = send
        self._failed = failed
        self._skipped = 0
        self._digest = hashlib.sha256()

    async def __call__(self, message: Message) -> None:
        failed = self._failed
        if not failed.started:
            await self._send(message)
            return
        if message["type"] == "http.response.start":
            status = int(message["status"])
            headers = list(message.get("headers", []))
            if status != failed.status or refusal(status, headers, streams=True) is not None:
                raise StreamDiverged("the fresh answer starts differently")
            return
        if message["type"] != "http.response.body":
            await self._send(message)
            return
        body = bytes(message.get("body", b""))
        more = bool(message.get("more_body", False))
        if self._skipped < failed.sent:
            take = min(len(body), failed.sent - self._skipped)
            self._digest.update(body[:take])
            self._skipped += take
            body = body[take:]
            if self._skipped < failed.sent:
                if not more:
                    raise StreamDiverged("the fresh answer is shorter than what was sent")
                return
            if self._digest.digest() != failed.digest:
                raise StreamDiverged("the fresh answer begins with other bytes")
            if not body and more:
                return
        await self._send({"type": "http.response.body", "body": body, "more_body": more})
