"""A loopback TCP proxy that injects faults between a client and a server (asyncio).

Modes, switchable at any time and applied to open connections too:
- `pass`: bytes flow unchanged;
- `delay`: every chunk is held `delay` seconds before it is forwarded (order kept);
- `blackhole`: connections are accepted and read, nothing is forwarded either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Literal

Mode = Literal["pass", "delay", "blackhole"]


class TcpProxy:
    """`async with TcpProxy(upstream_port) as proxy:` listens on `proxy.port` (127.0.0.1)."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.mode: Mode = "pass"
        self.delay = 0.0
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    def set_mode(self, mode: Mode, delay: float = 0.0) -> None:
        self.mode, self.delay = mode, delay

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop listening and cut every connection."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def _spawn(self, coroutine: object) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            self._writers.discard(writer)
            return
        self._writers.add(up_writer)
        self._spawn(self._pipe(reader, up_writer))
        self._spawn(self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Forward one direction; a queue keeps delayed chunks in order."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

        async def deliver() -> None:
            while (item := await queue.get()) is not None:
                due, data = item
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()

        sender = self._spawn(deliver())
        try:
            while data := await reader.read(65536):
                if self.mode == "blackhole":
                    continue
                due = time.monotonic() + (self.delay if self.mode == "delay" else 0.0)
                queue.put_nowait((due, data))
            queue.put_nowait(None)
            await sender
        except OSError:
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(OSError):
                writer.close()
            self._writers.discard(writer)
