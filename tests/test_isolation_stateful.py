"""Isolation and freshness as properties, on MemoryStore, the real Redis and a Redis Cluster.

A `RuleBasedStateMachine` drives the cached service with single and concurrent requests over
many tenants, subjects and queries, invalidations (writes and the API) and slow fresh paths
racing an invalidation. Against a model of which invalidations each scope has seen it checks:
an answer computed for one scope is never served to another, and after an invalidation has
returned no answer computed before it is served. A second property: the L2 cache never returns
a vector for another model, input type or dimension (fake Cohere, `cohere_server.py`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import cohere
import httpx
import pytest
from conftest import delete_namespace
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    rule,
    run_state_machine_as_test,
)
from support.apps import Harness
from support.cohere_server import CohereServer, float_vector
from support.model import Model
from support.stores import fresh_metrics

from cachegate.embeddings import CachedEmbedder
from cachegate.store import MemoryStore, RedisStore, Store

KINDS = ["memory", "redis", "cluster"]
TENANTS = st.sampled_from(["t1", "t2", "t3", "t4"])
SUBJECTS = st.sampled_from(["c1", "c2", None])
QUERIES = st.sampled_from(["q1", "q2", "q3"])
HOW = st.sampled_from(["write", "api"])
ASK = st.tuples(TENANTS, SUBJECTS, QUERIES)


def store_factory(request: pytest.FixtureRequest, kind: str, namespace: str) -> Callable[[], Store]:
    """A function that makes a fresh store of `kind` (called inside the machine's event loop)."""
    if kind == "memory":
        return MemoryStore
    if kind == "redis":
        url = request.getfixturevalue("redis_url")
        request.addfinalizer(lambda: delete_namespace(url, namespace))
        return lambda: RedisStore.from_url(url, deadline=1.0, metrics=fresh_metrics())
    cluster_url = request.getfixturevalue("redis_cluster").url
    return lambda: RedisStore.from_url(
        cluster_url, cluster=True, deadline=1.0, metrics=fresh_metrics()
    )


class CacheMachine(RuleBasedStateMachine):
    """The service behind the middleware on one store; `make_store` and `namespace` are set
    on a subclass per test."""

    make_store: Callable[[], Store]
    namespace: str

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.model = Model()
        # computation number -> (tenant, subject, query, model version when it started)
        self.computed: dict[int, tuple[str, str | None, str, tuple[int, int]]] = {}
        self.served = 0
        self.h: Harness | None = None

    @initialize()
    def start(self) -> None:
        async def make() -> Harness:
            # A namespace per example: entries of earlier examples never meet this model.
            namespace = f"{self.namespace}-{uuid.uuid4().hex[:8]}"
            return Harness(store=self.make_store(), namespace=namespace)

        self.h = self.runner.run(make())
        self.h.service.stamp = True

    @property
    def harness(self) -> Harness:
        assert self.h is not None
        return self.h

    def teardown(self) -> None:
        if self.h is not None:
            h = self.h

            async def close() -> None:
                await h.aclose()
                await h.store.aclose()

            self.runner.run(close())
        self.runner.close()

    # ---- checks --------------------------------------------------------------------------

    def check(
        self,
        response: httpx.Response,
        asked: tuple[str, str | None, str],
        version_at_start: tuple[int, int],
        computations_before: int,
    ) -> None:
        assert response.status_code == 200
        answer = response.json()
        number = answer["computation"]
        assert (answer["tenant"], answer["client"], answer["query"]) == asked
        path = response.headers["x-cachegate"]
        if path in ("miss", "bypass"):
            assert number > computations_before  # computed for this very request
            self.computed[number] = (*asked, version_at_start)
            if path == "bypass":
                # the safe answer when the store is slow to acknowledge an invalidation (a
                # loaded machine, a Cluster); any other reason here would be a bug
                reasons = set(self.harness.bypass_counts())
                assert reasons <= {"invalidation_pending", "store_error"}, reasons
        else:
            assert path == "hit", (path, self.harness.bypass_counts())
            assert self.computed[number][:3] == asked, "served another scope's answer"
            assert self.computed[number][3] == self.model.version(asked[0], asked[1]), (
                "served an answer computed before an invalidation"
            )
            self.served += 1

    async def invalidate(self, how: str, tenant: str, subject: str | None) -> None:
        h = self.harness
        if how == "write":
            assert (await h.write(subject, tenant=tenant)).status_code == 201
        else:
            assert await h.gate.invalidate(tenant, subject)
        self.model.invalidate(tenant, subject)

    # ---- rules ---------------------------------------------------------------------------

    @rule(asked=ASK)
    def ask(self, asked: tuple[str, str | None, str]) -> None:
        h = self.harness
        tenant, subject, query = asked
        version, before = self.model.version(tenant, subject), h.service.calls["query"]
        response = self.runner.run(h.ask(query, tenant=tenant, client=subject))
        self.check(response, asked, version, before)

    @rule(batch=st.lists(ASK, min_size=2, max_size=8), slow=st.sampled_from([0.0, 0.01]))
    def ask_concurrently(self, batch: list[tuple[str, str | None, str]], slow: float) -> None:
        """Identical and different requests at once (single-flight), on a slow fresh path."""
        h = self.harness
        h.service.delay = slow
        versions = [self.model.version(t, s) for t, s, _ in batch]
        before = h.service.calls["query"]

        async def all_at_once() -> list[httpx.Response]:
            return await asyncio.gather(*(h.ask(q, tenant=t, client=s) for t, s, q in batch))

        try:
            responses = self.runner.run(all_at_once())
        finally:
            h.service.delay = 0.0
        # Misses first: a single-flight waiter's "hit" is its leader's computation.
        misses_first = sorted(
            range(len(batch)), key=lambda i: responses[i].headers["x-cachegate"] != "miss"
        )
        for index in misses_first:
            self.check(responses[index], batch[index], versions[index], before)

    @rule(how=HOW, tenant=TENANTS, subject=SUBJECTS)
    def invalidate_scope(self, how: str, tenant: str, subject: str | None) -> None:
        self.runner.run(self.invalidate(how, tenant, subject))

    @rule(asked=ASK, how=HOW, tenant=TENANTS, subject=SUBJECTS)
    def race(
        self, asked: tuple[str, str | None, str], how: str, tenant: str, subject: str | None
    ) -> None:
        """A slow computation that an invalidation overtakes; it may be stored, never served."""
        h = self.harness
        version, before = self.model.version(asked[0], asked[1]), h.service.calls["query"]

        async def scenario() -> httpx.Response | None:
            entered, release = h.service.hold("race")
            task = asyncio.create_task(
                h.ask(asked[2], tenant=asked[0], client=asked[1], headers={"X-Hold": "race"})
            )
            waiting = asyncio.create_task(entered.wait())
            await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
            if task.done():  # a hit: answered before the invalidation
                self.check(task.result(), asked, version, before)
                await self.invalidate(how, tenant, subject)
                return None
            await self.invalidate(how, tenant, subject)  # while the computation runs
            release.set()
            return await task

        response = self.runner.run(scenario())
        if response is not None:
            self.check(response, asked, version, before)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_no_answer_crosses_scopes_or_outlives_an_invalidation(
    request: pytest.FixtureRequest, kind: str, namespace: str
) -> None:
    machine = type(
        f"CacheMachine_{kind}",
        (CacheMachine,),
        {
            "make_store": staticmethod(store_factory(request, kind, namespace)),
            "namespace": namespace,
        },
    )
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=25 if kind == "memory" else 15,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


# ---- L2: never another model's, input type's or dimension's vector --------------------------

MODELS = st.sampled_from(["embed-english-v3.0", "embed-multilingual-v3.0", "embed-v4.0"])
INPUT_TYPES = st.sampled_from(["search_query", "search_document", "classification"])
DIMENSIONS = st.sampled_from([8, 16, 32])
TEXTS = st.lists(st.sampled_from(["alpha", "beta", "gamma", "delta"]), min_size=1, max_size=4)
CALLS = st.lists(st.tuples(MODELS, INPUT_TYPES, DIMENSIONS, TEXTS), min_size=1, max_size=12)


@pytest.fixture(scope="module")
def cohere_server() -> Iterator[CohereServer]:
    with CohereServer(default_dimension=16) as server:
        yield server


@pytest.mark.parametrize("kind", KINDS)
def test_l2_never_returns_a_vector_for_another_model_input_type_or_dimension(
    request: pytest.FixtureRequest, kind: str, namespace: str, cohere_server: CohereServer
) -> None:
    make_store = store_factory(request, kind, namespace)

    @given(calls=CALLS)
    @settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    def property_(calls: list[tuple[str, str, int, list[str]]]) -> None:
        async def run() -> None:
            store = make_store()
            client = cohere.AsyncClientV2(api_key="test", base_url=cohere_server.url, max_retries=0)
            space = f"{namespace}-{uuid.uuid4().hex[:8]}"
            cached = CachedEmbedder(client, store, namespace=space, tenant=lambda: "tenant-a")
            try:
                for model, input_type, dimension, texts in calls:
                    result: Any = await cached.embed(
                        texts=texts,
                        model=model,
                        input_type=input_type,
                        embedding_types=["float"],
                        output_dimension=dimension,
                    )
                    assert result.embeddings.float_ == [
                        float_vector(model, input_type, text, dimension) for text in texts
                    ]
            finally:
                await store.aclose()

        asyncio.run(run())

    property_()
    assert cohere_server.calls, "the property ran against the Cohere-compatible server"
