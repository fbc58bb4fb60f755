"""The epoch of a Redis server: a number its data cannot carry back in time.

A Redis restarted from its RDB or AOF, or a replica promoted after lagging, holds state from
before writes that clients saw succeed: entries and generation counters both went back, so an
entry's recorded generations match again. The server's identity does not go back: `run_id`
changes on every start and `master_replid` on every promotion. Every new connection reads both
(`INFO server`, `INFO replication`) before its first command, so a lookup answered on it is
checked against the identity of the server that answered; an entry written under another
epoch is a miss.

Where `INFO` is refused (an ACL without `@dangerous` or `+info`), the epoch is `UNCHECKED` and
restarts are not detected: logged once (a warning), and `ServerEpochs.checked` is False.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any

from redis.exceptions import ResponseError

logger = logging.getLogger("cachegate.store")

UNCHECKED = 1
"""The epoch when the server's identity cannot be read."""


def epoch_of(run_id: bytes, replid: bytes) -> int:
    """A positive 62-bit number for a server identity (never 0, never `UNCHECKED`)."""
    digest = hashlib.blake2b(run_id + b"/" + replid, digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 2) | 2


def _field(info: bytes, name: bytes) -> bytes:
    for line in info.splitlines():
        if line.startswith(name + b":"):
            return line.partition(b":")[2].strip()
    return b""


class ServerEpochs:
    """The epoch of each Redis node this process is connected to, read on every connect.

    `on_connect` is passed to redis-py as `redis_connect_func`: it runs redis-py's own
    handshake, then reads the identity, before the connection carries any command.
    """

    def __init__(
        self, on_change: Callable[[], None] | None = None, *, per_node: bool = False
    ) -> None:
        self._by_node: dict[str, int] = {}
        self.latest = 0
        """The epoch read by the most recent connection (0: none yet)."""
        self.checked = True
        self._on_change = on_change
        self._per_node = per_node
        """A Cluster's nodes each have their own epoch; one logical server (a single node, or
        Sentinel's current master, whose address changes on failover) has one."""

    def of(self, node: str) -> int:
        """The epoch of `node` ("host:port"), or of the latest connection if it is unknown."""
        return self._by_node.get(node, self.latest)

    async def on_connect(self, connection: Any) -> None:
        """redis-py's handshake, then the server's identity."""
        await connection.on_connect()
        try:  # both in one round trip
            commands = (("INFO", "server"), ("INFO", "replication"))
            await connection.send_packed_command(connection.pack_commands(commands))
            server = await connection.read_response()
            replication = await connection.read_response()
        except ResponseError:
            if self.checked:
                logger.warning("INFO refused: a Redis restart or failover cannot be detected")
            self.checked = False
            self.record(f"{connection.host}:{connection.port}", UNCHECKED)
            return
        run_id = _field(_bytes(server), b"run_id")
        replid = _field(_bytes(replication), b"master_replid")
        self.record(f"{connection.host}:{connection.port}", epoch_of(run_id, replid))

    def record(self, node: str, epoch: int) -> None:
        """Remember `node`'s epoch; a change means its older entries are misses from now on."""
        previous = self._by_node.get(node) if self._per_node else (self.latest or None)
        self._by_node[node] = epoch
        self.latest = epoch
        if previous is not None and previous != epoch and self._on_change is not None:
            self._on_change()


def _bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode()
