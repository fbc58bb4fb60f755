"""A real local Redis Cluster: three masters spawned from `redis-server` on free loopback ports.

`RedisCluster` starts the nodes (`--cluster-enabled yes`, no persistence, each node's
`nodes.conf` in its own temporary directory), joins them with `redis-cli --cluster create
--cluster-replicas 0` and waits for `cluster_state:ok`. A node can be killed (SIGKILL) and
started again on the same port and directory, so it rejoins with its slots (and no data).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from support.components import missing
from support.redis_server import RedisServer, free_port, redis_server_binary

MASTERS = 3


class ClusterNode(RedisServer):
    """One cluster node: a redis-server with cluster mode on, its own port and directory."""

    def __init__(self, binary: str, port: int, directory: Path) -> None:
        self.bus_port = free_port()
        """The cluster bus on a free port of its own (the default, port + 10000, may be
        above 65535 or taken)."""
        super().__init__(
            binary,
            port,
            directory=str(directory),
            options=(
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                str(self.bus_port),
                "--cluster-config-file",
                str(directory / "nodes.conf"),
                "--cluster-node-timeout",
                "2000",
            ),
        )

    def kill(self) -> None:
        """SIGKILL the node and wait for it (its data is gone, its nodes.conf stays)."""
        self.stop()

    def info(self) -> dict[str, str]:
        """`CLUSTER INFO` as a dict."""
        with self.client() as client:
            raw = client.execute_command("CLUSTER INFO")
        if isinstance(raw, dict):  # redis-py parses the reply
            return {str(key): str(value) for key, value in raw.items()}
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
        return {key: value.strip() for key, value in pairs}


class RedisCluster:
    """Three masters, no replicas; `url` points at the first node (any node bootstraps)."""

    def __init__(self, binary: str, masters: int = MASTERS) -> None:
        self._root = Path(tempfile.mkdtemp(prefix="cg-cluster-"))
        self.nodes: list[ClusterNode] = []
        for index in range(masters):
            directory = self._root / f"node{index}"
            directory.mkdir()
            self.nodes.append(ClusterNode(binary, free_port(), directory))

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}"

    def start(self, timeout: float = 20.0) -> None:
        """Spawn every node, create the cluster and wait until it is ok everywhere."""
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{node.port}" for node in self.nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout,
        )
        self.wait_ok(timeout)

    def wait_ok(self, timeout: float = 20.0) -> None:
        """Until every node reports `cluster_state:ok` and knows all the masters."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                infos = [node.info() for node in self.nodes]
            except redis.RedisError:
                infos = []
            if infos and all(
                info.get("cluster_state") == "ok"
                and info.get("cluster_known_nodes") == str(len(self.nodes))
                for info in infos
            ):
                return
            time.sleep(0.05)
        raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")

    def node_for(self, key: str) -> ClusterNode:
        """The master serving `key`'s slot."""
        with self.nodes[0].client() as client:
            slot = int(client.execute_command("CLUSTER KEYSLOT", key))
            shards = client.execute_command("CLUSTER SLOTS")
        for start, end, master, *_ in shards:
            if int(start) <= slot <= int(end):
                port = int(master[1])
                return next(node for node in self.nodes if node.port == port)
        raise LookupError(f"no node serves slot {slot}")

    def flush(self) -> None:
        """Empty every master (the cluster is private to the test session)."""
        for node in self.nodes:
            with node.client() as client:
                client.flushall()

    def close(self) -> None:
        for node in self.nodes:
            node.kill()
        shutil.rmtree(self._root, ignore_errors=True)


@contextmanager
def running_cluster(binary: str) -> Iterator[RedisCluster]:
    """A started cluster, stopped and removed at the end whatever happens."""
    for _ in range(3):
        cluster = RedisCluster(binary)
        try:
            cluster.start()
        except (RuntimeError, subprocess.SubprocessError):  # a port was taken: new ports
            cluster.close()
            continue
        try:
            yield cluster
        finally:
            cluster.close()
        return
    raise RuntimeError("could not start a Redis Cluster")


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """The session's private cluster (skipped locally, failed in CI, without redis-server)."""
    binary = redis_server_binary()
    if binary is None or shutil.which("redis-cli") is None:
        missing("redis-server and redis-cli (for a Redis Cluster)")
    assert binary is not None
    with running_cluster(binary) as cluster:
        yield cluster
