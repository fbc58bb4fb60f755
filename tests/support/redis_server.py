"""A private `redis-server` on a free loopback port, for tests that take Redis down.

Never the shared server: each `RedisServer` spawns its own process (no persistence, no dump
file) and can stop it, pause it (SIGSTOP: a Redis that accepts connections but never answers),
resume it, and start it again on the same port.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import redis


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server_binary() -> str | None:
    """Path of `redis-server`, or None when it is not installed."""
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
    )


class RedisServer:
    """One spawned redis-server; `url` stays the same across stop/start."""

    def __init__(
        self,
        binary: str,
        port: int | None = None,
        *,
        directory: str | None = None,
        options: Sequence[str] = (),
    ) -> None:
        self.binary = binary
        self.port = port if port is not None else free_port()
        self._dir = directory if directory is not None else tempfile.mkdtemp(prefix="cg-redis-")
        self._options = list(options)
        self._process: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """A synchronous admin client (short timeouts)."""
        return redis.Redis(
            host="127.0.0.1", port=self.port, socket_connect_timeout=1, socket_timeout=1
        )

    def start(self, timeout: float = 10.0) -> None:
        """Spawn the server and wait until it answers PING."""
        assert self._process is None, "already running"
        self._process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir,
                "--loglevel",
                "warning",
                *self._options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._process.returncode}")
            try:
                client = self.client()
                try:
                    if client.ping():
                        return
                finally:
                    client.close()
            except redis.RedisError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not answer")

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel, nothing is ever answered."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT: the server answers again, with its data."""
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)
        self.paused = False

    def stop(self) -> None:
        """Kill the server (its data is gone) and wait for it; the port is free again."""
        process, self._process = self._process, None
        if process is None:
            return
        process.kill()  # SIGKILL also ends a SIGSTOPped process
        process.wait(timeout=10)
        self.paused = False

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


@contextmanager
def running_redis(binary: str) -> Iterator[RedisServer]:
    """A started server, stopped and cleaned up at the end whatever happens."""
    for _ in range(5):
        server = RedisServer(binary)
        try:
            server.start()
        except RuntimeError:  # the free port was taken in the meantime: try another one
            server.close()
            continue
        try:
            yield server
        finally:
            server.close()
        return
    raise RuntimeError("could not start a redis-server")
