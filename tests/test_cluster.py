"""`RedisStore` on a real Redis Cluster (three masters, `redis_cluster` fixture): one slot per
tenant, L2 batches split by slot in order, and a master killed mid-run fails open and recovers.

The store contract and middleware suites also run on the cluster (`store` fixture, `cluster`)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import anyio
import pytest
from support.apps import Harness
from support.redis_cluster import ClusterNode, RedisCluster

from cachegate.breaker import BreakerState
from cachegate.embeddings import vector_key
from cachegate.keys import CacheScope, KeySpace
from cachegate.store import RedisStore

pytestmark = pytest.mark.anyio

DEADLINE = 0.05
STORE_CALLS = 3
"""The most store calls one request makes: lookup, generations, write."""


def tenant_on(cluster: RedisCluster, namespace: str, node: ClusterNode, *, other: bool) -> str:
    """A tenant whose keys live on `node` (or, with `other`, on another node)."""
    space = KeySpace(namespace)
    for index in range(500):
        tenant = f"tenant-{index}"
        on_node = cluster.node_for(space.generation_keys(CacheScope(tenant, "c1"))[0]) is node
        if on_node != other:
            return tenant
    raise AssertionError("no tenant found")  # 500 tries: never, with three masters


@pytest.fixture
async def cluster_store(redis_cluster: RedisCluster) -> AsyncIterator[RedisStore]:
    store = RedisStore.from_url(
        redis_cluster.url, cluster=True, deadline=DEADLINE, invalidation_deadline=0.2
    )
    store.breaker.cooldown = 0.3  # the default is 2 s; the behaviour is the same
    await store.client.initialize()  # topology discovery is not what these tests time
    yield store
    await store.aclose()


async def test_a_tenants_keys_share_one_slot_and_lookup_is_one_node(
    redis_cluster: RedisCluster, namespace: str
) -> None:
    space = KeySpace(namespace)
    nodes = set()
    for index in range(12):
        scope = CacheScope(f"tenant-{index}", f"client-{index}")
        keys = [space.entry_key(scope, route="/q", method="POST", material={"q": index})]
        keys += space.generation_keys(scope)
        keys += space.generation_keys(CacheScope(f"tenant-{index}", None))
        assert len({redis_cluster.node_for(key).port for key in keys}) == 1
        nodes.add(redis_cluster.node_for(keys[0]).port)
    assert len(nodes) > 1  # tenants are spread over the masters


async def test_l2_batches_span_nodes_and_come_back_in_order(
    redis_cluster: RedisCluster, namespace: str
) -> None:
    store = RedisStore.from_url(redis_cluster.url, cluster=True, deadline=1.0)
    keys = [
        vector_key(
            namespace,
            text=f"text {index}",
            model="m",
            input_type="search_query",
            embedding_type="float",
            tenant="t",
        )
        for index in range(60)
    ]
    assert len({redis_cluster.node_for(key).port for key in keys}) == 3  # no shared tag
    stored = [(key, f"v{index}".encode()) for index, key in enumerate(keys) if index % 3]
    try:
        await store.set_many(stored, 30)
        values = await store.get_many([*keys, keys[1], keys[0]])
    finally:
        await store.aclose()
    expected = [f"v{i}".encode() if i % 3 else None for i in range(60)]
    assert values == [*expected, b"v1", None]


@pytest.mark.slow
async def test_a_master_killed_mid_run_fails_open_and_caching_recovers(
    redis_cluster: RedisCluster, cluster_store: RedisStore, namespace: str
) -> None:
    victim = redis_cluster.nodes[1]
    doomed = tenant_on(redis_cluster, namespace, victim, other=False)
    spared = tenant_on(redis_cluster, namespace, victim, other=True)
    async with Harness(store=cluster_store, namespace=namespace) as h:
        h.gate.invalidator.retry_interval = 0.05
        for tenant in (doomed, spared):  # the first calls may meet connection set-up
            paths = [(await h.ask(tenant=tenant)).headers["x-cachegate"] for _ in range(5)]
            assert paths[-2:] == ["hit", "hit"], paths

        victim.kill()
        try:
            # Ask for ~3 s: past cluster-node-timeout (2 s) the cluster itself says CLUSTERDOWN.
            outage: list[str] = []
            ended = time.monotonic() + 3.0
            while time.monotonic() < ended:
                for tenant in (doomed, spared):
                    started = time.monotonic()
                    response = await h.ask(tenant=tenant)
                    took = time.monotonic() - started
                    assert response.status_code == 200
                    assert response.json()["tenant"] == tenant
                    # Not a timing test (benchmarks/ has the figure): only a wait many times
                    # the budget (its store calls' deadlines) fails, e.g. a socket timeout.
                    assert took < 10 * STORE_CALLS * DEADLINE, f"waited {took:.3f}s"
                    outage.append(response.headers["x-cachegate"])
                await anyio.sleep(0.02)
            assert set(outage) <= {"hit", "miss", "bypass"}
            assert h.bypassed("store_error") >= 1
            assert "bypass" in outage
        finally:
            victim.start()  # same port and nodes.conf: it rejoins with its slots
        restarted = time.monotonic()
        redis_cluster.wait_ok()

        recovered: dict[str, float] = {}
        limit = time.monotonic() + 15.0
        while len(recovered) < 2:
            assert time.monotonic() < limit, f"caching did not recover: {recovered}"
            for tenant in (doomed, spared):
                response = await h.ask(tenant=tenant)
                assert response.status_code == 200
                if tenant not in recovered and response.headers["x-cachegate"] == "hit":
                    recovered[tenant] = time.monotonic() - restarted
            await anyio.sleep(0.05)
        assert cluster_store.breaker.state is BreakerState.CLOSED
        print(f"cluster recovery after restart: {recovered}")
