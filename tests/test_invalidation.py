"""Invalidation (write routes and the API), the stale-write race, single-flight and corrupt
entries, on both stores; and a property test of isolation and freshness against a model."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.apps import TENANT_HEADER, Harness
from support.asgi import Message, drive
from support.model import Model

from cachegate import CacheScope, Limits
from cachegate.results import RequestFacts
from cachegate.singleflight import Flight, SingleFlight
from cachegate.store import MemoryStore, Store
from cachegate.store.codec import Entry, decode_entry, encode_entry

pytestmark = pytest.mark.anyio

Build = Callable[..., Harness]
QUESTION = "what did the client say about sleep?"


@pytest.fixture
async def build(store: Store, namespace: str) -> AsyncIterator[Build]:
    made: list[Harness] = []

    def make(**options: Any) -> Harness:
        options.setdefault("store", store)
        harness = Harness(namespace=namespace, **options)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        await harness.aclose()


def entry_key(h: Harness, tenant: str = "t1", client: str | None = "c1", query: str = QUESTION):
    """The facts (key, generation keys) the middleware computes for this question."""
    body: dict[str, object] = {"query": query}
    if client is not None:
        body["client_id"] = client
    headers = [(TENANT_HEADER.lower().encode(), tenant.encode())]
    return h.gate.keys_for("POST", "/ai/query", headers=headers, body=json.dumps(body).encode())


async def warm(h: Harness, *scopes: tuple[str, str | None]) -> None:
    for tenant, client in scopes:
        await h.ask(tenant=tenant, client=client)
        assert (await h.ask(tenant=tenant, client=client)).headers["x-cachegate"] == "hit"


async def outcome(h: Harness, tenant: str, client: str | None) -> str:
    return (await h.ask(tenant=tenant, client=client)).headers["x-cachegate"]


# ---- by write route and by API ---------------------------------------------------------------


async def test_post_sessions_invalidates_that_clients_answers(build: Build) -> None:
    h = build()
    await warm(h, ("t1", "c1"))
    written = await h.write("c1", notes="slept badly")
    assert written.status_code == 201
    after = await h.ask()
    assert after.headers["x-cachegate"] == "miss"
    assert after.json()["notes"] == ["slept badly"]
    assert (await h.ask()).headers["x-cachegate"] == "hit"
    invalidations = "cachegate_cache_invalidations_total"
    assert h.sample(invalidations, reason="session_created") == 1


async def test_put_patch_delete_invalidate_the_subject_named_by_the_response(
    build: Build,
) -> None:
    h = build()
    session_id = (await h.write("c1", notes="first")).json()["session_id"]
    await warm(h, ("t1", "c1"), ("t1", "c2"))
    url = f"/sessions/{session_id}"
    for method, expected in (("PUT", ["second"]), ("PATCH", ["third"]), ("DELETE", [])):
        notes = {"notes": expected[0]} if expected else None
        response = await h.client.request(
            method, url, json=notes, headers={TENANT_HEADER: "t1"}
        )  # no client_id in the request: it comes from the response
        assert response.status_code == 200
        fresh = await h.ask()
        assert fresh.headers["x-cachegate"] == "miss", method
        assert fresh.json()["notes"] == expected
        assert (await h.ask()).headers["x-cachegate"] == "hit"
        assert await outcome(h, "t1", "c2") == "hit"  # another client: untouched
    assert h.sample("cachegate_cache_invalidations_total", reason="session_changed") == 3


@pytest.mark.parametrize("how", ["api", "write"])
async def test_one_subject_keeps_other_subjects_but_drops_subjectless_entries(
    build: Build, how: str
) -> None:
    h = build()
    await warm(h, ("t1", "c1"), ("t1", "c2"), ("t1", None), ("t2", "c1"), ("t2", None))
    if how == "api":
        assert await h.gate.invalidate("t1", "c1") is True
    else:
        assert (await h.write("c1")).status_code == 201
    assert await outcome(h, "t1", "c1") == "miss"
    assert await outcome(h, "t1", "c2") == "hit"
    assert await outcome(h, "t1", None) == "miss"  # may have drawn on c1's data
    assert await outcome(h, "t2", "c1") == "hit"  # another tenant's c1
    assert await outcome(h, "t2", None) == "hit"


@pytest.mark.parametrize("how", ["api", "write"])
async def test_a_tenant_wide_invalidation_drops_all_of_that_tenant(build: Build, how: str) -> None:
    h = build()
    await warm(h, ("t1", "c1"), ("t1", "c2"), ("t1", None), ("t2", "c1"))
    if how == "api":
        assert await h.gate.invalidate("t1", reason="import") is True
        assert h.sample("cachegate_cache_invalidations_total", reason="import") == 1
    else:
        assert (await h.write(None)).status_code == 201  # no client_id: the whole tenant
    for client in ("c1", "c2", None):
        assert await outcome(h, "t1", client) == "miss"
    assert await outcome(h, "t2", "c1") == "hit"


@pytest.mark.parametrize("status", [400, 404, 409, 422])
async def test_4xx_writes_do_not_invalidate(build: Build, status: int) -> None:
    h = build()
    await warm(h, ("t1", "c1"), ("t1", None))
    assert (await h.write("c1", status=status)).status_code == status
    missing = await h.client.put(
        "/sessions/nope", json={"notes": "x"}, headers={TENANT_HEADER: "t1"}
    )
    assert missing.status_code == 404
    assert await outcome(h, "t1", "c1") == "hit"
    assert await outcome(h, "t1", None) == "hit"
    assert h.sample("cachegate_cache_invalidations_total", reason="session_created") == 0


async def test_5xx_writes_invalidate_since_they_may_have_written(build: Build) -> None:
    h = build()
    await warm(h, ("t1", "c1"))
    assert (await h.write("c1", status=503)).status_code == 503
    assert await outcome(h, "t1", "c1") == "miss"


async def test_the_write_response_is_not_sent_before_the_bump(build: Build, store: Store) -> None:
    h = build()
    await warm(h, ("t1", "c1"))
    generation_keys = h.gate.keyspace.generation_keys(CacheScope("t1", "c1"))
    before = (await store.lookup(generation_keys[0] + ":unused", generation_keys)).generations
    seen_at_send: list[tuple[str, tuple[int, ...]]] = []

    async def on_send(message: Message) -> None:
        now = (await store.lookup(generation_keys[0] + ":unused", generation_keys)).generations
        seen_at_send.append((message["type"], now))

    exchange = await drive(
        h.app,
        path="/sessions",
        headers=[(b"x-tenant", b"t1"), (b"content-type", b"application/json")],
        chunks=[b'{"client_id": "c1", "notes": "new"}'],
        on_send=on_send,
    )
    assert exchange.status == 201
    assert seen_at_send[0][0] == "http.response.start"
    for _, generations in seen_at_send:
        assert generations[1] > before[1]  # already advanced when the first byte left
        assert generations[0] == before[0]


async def test_write_over_the_body_cap_invalidates_the_whole_tenant(build: Build) -> None:
    h = build(limits=Limits(max_body_bytes=200))
    await warm(h, ("t1", "c1"), ("t1", "c2"), ("t2", "c1"))
    response = await h.write("c1", notes="n" * 1000)
    assert response.status_code == 201
    assert h.service.sessions["s1"][2] == "n" * 1000  # the app got the whole body
    assert await outcome(h, "t1", "c2") == "miss"  # subject unknown: the tenant
    assert await outcome(h, "t2", "c1") == "hit"


async def test_write_without_tenant_passes_through(build: Build) -> None:
    h = build()
    await warm(h, ("t1", "c1"))
    response = await h.client.post("/sessions", json={"client_id": "c1", "notes": "x"})
    assert response.status_code == 201
    assert h.bypassed("no_tenant") == 1
    assert await outcome(h, "t1", "c1") == "hit"


async def test_a_write_with_an_unencodable_subject_still_answers(build: Build) -> None:
    """A lone surrogate (valid JSON: "\\ud800") in the subject must not turn into a 500."""

    h = build()
    h.service.terse_writes = True
    await warm(h, ("t1", "c1"), ("t1", None))
    response = await h.client.post(
        "/sessions",
        content=b'{"client_id": "\\ud800", "notes": "x"}',
        headers={TENANT_HEADER: "t1"},
    )
    assert response.status_code == 201
    assert await outcome(h, "t1", "c1") == "hit"  # another subject
    assert await outcome(h, "t1", None) == "miss"  # but the subject-less entry was invalidated


# ---- the stale-write race --------------------------------------------------------------------


@pytest.mark.parametrize("how", ["write", "api", "tenant"])
async def test_a_computation_that_started_before_an_invalidation_is_never_served_after_it(
    build: Build, how: str
) -> None:
    h = build()
    entered, release = h.service.hold("slow")
    slow = asyncio.create_task(h.ask(headers={"X-Hold": "slow"}))
    await entered.wait()  # the app has read the notes: none yet
    if how == "write":
        assert (await h.write("c1", notes="new note")).status_code == 201
    else:
        h.service.notes[("t1", "c1")] = ["new note"]
        assert await h.gate.invalidate("t1", None if how == "tenant" else "c1")
    release.set()
    stale = await slow
    assert stale.headers["x-cachegate"] == "miss"
    assert stale.json()["notes"] == []  # it was computed before the write
    for _ in range(2):
        after = await h.ask()
        assert after.json()["notes"] == ["new note"]  # never the stale answer
    assert h.service.calls["query"] == 2


async def test_a_request_after_the_invalidation_does_not_join_an_older_computation(
    build: Build,
) -> None:
    h = build()
    entered, release = h.service.hold("slow")
    slow = asyncio.create_task(h.ask(headers={"X-Hold": "slow"}))
    await entered.wait()
    assert (await h.write("c1", notes="new note")).status_code == 201
    newer = await h.ask()  # same key, but newer generations: computes on its own
    assert newer.headers["x-cachegate"] == "miss"
    assert newer.json()["notes"] == ["new note"]
    release.set()
    assert (await slow).json()["notes"] == []
    later = await h.ask()  # the slow one finished last, but is never served
    assert later.json()["notes"] == ["new note"]


# ---- single-flight ---------------------------------------------------------------------------


class ObservedFlights(SingleFlight[Entry]):
    """The real single-flight, telling how many requests are waiting on a leader."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = 0

    async def wait(self, key: str, patience: float) -> Entry | None:
        self.waiting += 1
        return await super().wait(key, patience)

    async def join(self, flight: Flight[Entry], patience: float) -> Entry | None:
        self.waiting += 1
        return await super().join(flight, patience)


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(2000):  # 10 s at most
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached in time")


async def test_concurrent_identical_misses_compute_once(build: Build) -> None:
    h = build()
    flights = h.gate.flights = ObservedFlights()
    entered, release = h.service.hold("all")
    tasks = [asyncio.create_task(h.ask(headers={"X-Hold": "all"})) for _ in range(8)]
    await entered.wait()
    await until(lambda: flights.waiting == 7)
    assert h.service.calls["query"] == 1  # the others wait; none entered the app
    release.set()
    responses = await asyncio.gather(*tasks)
    assert h.service.calls["query"] == 1
    assert {r.content for r in responses} == {responses[0].content}
    assert sorted(r.headers["x-cachegate"] for r in responses) == ["hit"] * 7 + ["miss"]
    assert h.sample("cachegate_single_flight_waits_total", outcome="shared") == 7
    assert len(h.gate.flights) == 0


async def test_a_waiter_that_waits_too_long_computes_on_its_own(build: Build) -> None:
    h = build(limits=Limits(single_flight_wait=0.05))
    entered, release = h.service.hold("slow")
    leader = asyncio.create_task(h.ask(headers={"X-Hold": "slow"}))
    await entered.wait()
    impatient = await h.ask()  # the leader is still held: gives up after 50 ms
    assert impatient.status_code == 200
    assert impatient.headers["x-cachegate"] == "miss"
    assert h.service.calls["query"] == 2
    # It waited out the leader's 50 ms (a counted timeout), or arrived after them and led
    # its own computation: which one depends on the machine's load, not on the code.
    assert h.sample("cachegate_single_flight_waits_total", outcome="timeout") <= 1
    release.set()
    assert (await leader).headers["x-cachegate"] == "miss"


async def test_a_leader_that_overran_the_wait_collects_no_more_waiters(build: Build) -> None:
    """A hung leader costs its own request: identical requests arriving after its
    `single_flight_wait` do not queue behind it, they share one new computation."""
    h = build(limits=Limits(single_flight_wait=0.2))
    flights = h.gate.flights = ObservedFlights()
    entered, release = h.service.hold("hung")
    leader = asyncio.create_task(h.ask(headers={"X-Hold": "hung"}))
    await entered.wait()
    await asyncio.sleep(0.3)  # past single_flight_wait: the leader overran
    later = await asyncio.gather(*(h.ask() for _ in range(5)))
    assert not leader.done()  # all five answered while the leader still hangs
    assert all(r.status_code == 200 for r in later)
    assert h.service.calls["query"] == 2  # the hung one and one for the five
    assert h.sample("cachegate_single_flight_waits_total", outcome="timeout") == 0
    assert flights.waiting <= 4  # none of them waited for the hung leader (no timeout)
    release.set()
    await leader


async def test_a_leader_without_a_storable_answer_lets_waiters_compute(build: Build) -> None:
    h = build()
    h.service.response_headers = {"cache-control": "no-store"}
    flights = h.gate.flights = ObservedFlights()
    entered, release = h.service.hold("all")
    tasks = [asyncio.create_task(h.ask(headers={"X-Hold": "all"})) for _ in range(3)]
    await entered.wait()
    await until(lambda: flights.waiting == 2)
    release.set()
    responses = await asyncio.gather(*tasks)
    assert all(r.status_code == 200 for r in responses)
    assert h.service.calls["query"] == 3
    assert h.sample("cachegate_single_flight_waits_total", outcome="not_shared") == 2


# ---- corrupt entries -------------------------------------------------------------------------


def _valid(generations: tuple[int, ...]) -> bytes:
    return encode_entry(Entry(200, ((b"content-type", b"text/plain"),), b"planted", generations))


async def stamped_generations(store: Store, facts: RequestFacts) -> tuple[int, ...]:
    """The generations an entry of `facts` records now: its scope's counters and the epoch."""
    counters = await store.generations(facts.generation_keys)
    return (*counters, (await store.lookup(facts.key, facts.generation_keys)).epoch)


@pytest.mark.parametrize(
    "forged",
    [
        {"status": 999},
        {"status": 42},
        {"headers": ((b"x-evil", b"a\r\nSet-Cookie: sid=1"),)},
        {"headers": ((b"x-evil", b"nul\x00byte"),)},
        {"headers": ((b"bad name", b"v"),)},
        {"headers": ((b"x-evil\r\n", b"v"),)},
    ],
)
async def test_a_forged_entry_an_http_server_cannot_send_is_a_counted_miss(
    build: Build, store: Store, forged: dict[str, object]
) -> None:
    """Valid format, current generations and epoch, but a status or header no HTTP server may
    send: replayed, the client would get a broken connection; it must be a miss instead."""
    h = build()
    h.service.response_headers = {"cache-control": "no-store"}  # so nothing refills the key
    facts = entry_key(h)
    fields: dict[str, Any] = {
        "status": 200,
        "headers": ((b"content-type", b"text/plain"),),
        "body": b"planted",
        "generations": await stamped_generations(store, facts),
        **forged,
    }
    await store.write(facts.key, encode_entry(Entry(**fields)), 60)
    response = await h.ask()
    assert response.status_code == 200
    assert response.headers["x-cachegate"] == "miss"
    assert b"planted" not in response.content
    assert h.sample("cachegate_corrupt_entries_total", cache_layer="query_result") == 1


@pytest.mark.parametrize("kind", ["foreign", "truncated", "padded", "other_version", "empty"])
async def test_corrupt_entries_are_a_miss_are_deleted_and_counted(
    build: Build, store: Store, kind: str
) -> None:
    h = build()
    h.service.response_headers = {"cache-control": "no-store"}  # so nothing refills the key
    facts = entry_key(h)
    generations = await store.generations(facts.generation_keys)
    good = _valid(generations)
    planted = {
        "foreign": b'{"status": 200, "body": "planted"}',
        "truncated": good[:-3],
        "padded": good + b"\x00",
        "other_version": good[:2] + b"\x09" + good[3:],
        "empty": b"",
    }[kind]
    await store.write(facts.key, planted, 60)
    response = await h.ask()
    assert response.status_code == 200
    assert response.headers["x-cachegate"] == "miss"
    assert b"planted" not in response.content
    assert h.sample("cachegate_corrupt_entries_total", cache_layer="query_result") == 1
    assert (await store.lookup(facts.key, ())).value is None  # deleted


async def test_a_planted_valid_entry_is_served_only_under_current_generations(
    build: Build, store: Store
) -> None:
    """The control for the corrupt-entry test: the key and format are the middleware's own."""
    h = build()
    facts = entry_key(h)
    generations = await stamped_generations(store, facts)
    await store.write(facts.key, _valid(tuple(g - 1 for g in generations)), 60)
    assert (await h.ask()).headers["x-cachegate"] == "miss"  # older generations: not served
    *counters, epoch = generations
    await store.write(facts.key, _valid((*counters, epoch + 1)), 60)
    assert (await h.ask()).headers["x-cachegate"] == "miss"  # another epoch: not served
    await store.write(facts.key, _valid(generations), 60)
    planted = await h.ask()
    assert planted.headers["x-cachegate"] == "hit"
    assert planted.content == b"planted"
    assert h.sample("cachegate_corrupt_entries_total", cache_layer="query_result") == 0
    stored = (await store.lookup(facts.key, ())).value
    assert stored is not None and decode_entry(stored).body == b"planted"


# ---- property: isolation and freshness against a model -------------------------------------

TENANTS = st.sampled_from(["t1", "t2", "t3"])
SUBJECTS = st.sampled_from(["c1", "c2", None])
QUERIES = st.sampled_from(["q1", "q2"])
INVALIDATION = st.tuples(st.sampled_from(["write", "api"]), TENANTS, SUBJECTS)
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("ask"), TENANTS, SUBJECTS, QUERIES),
        st.tuples(st.just("invalidate"), INVALIDATION),
        st.tuples(st.just("race"), TENANTS, SUBJECTS, QUERIES, INVALIDATION),
    ),
    max_size=30,
)


@given(operations=OPERATIONS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
async def test_no_answer_crosses_tenants_or_outlives_an_invalidation(
    operations: list[tuple[Any, ...]],
) -> None:
    model = Model()
    computed: dict[int, tuple[str, str | None, str, tuple[int, int]]] = {}
    async with Harness(store=MemoryStore()) as h:
        h.service.stamp = True

        async def invalidate(how: str, tenant: str, subject: str | None) -> None:
            if how == "write":
                assert (await h.write(subject, tenant=tenant)).status_code == 201
            else:
                assert await h.gate.invalidate(tenant, subject)
            model.invalidate(tenant, subject)

        def check(
            response: httpx.Response,
            tenant: str,
            subject: str | None,
            query: str,
            version_at_start: tuple[int, int],
            computations_before: int,
        ) -> None:
            assert response.status_code == 200
            answer = response.json()
            number = answer["computation"]
            assert (answer["tenant"], answer["client"], answer["query"]) == (tenant, subject, query)
            if response.headers["x-cachegate"] == "miss":
                assert number > computations_before  # computed for this very request
                computed[number] = (tenant, subject, query, version_at_start)
            else:
                assert response.headers["x-cachegate"] == "hit"
                assert computed[number][:3] == (tenant, subject, query)
                # computed under the scope's current invalidation state, never before one
                assert computed[number][3] == model.version(tenant, subject)

        for operation in operations:
            if operation[0] == "ask":
                _, tenant, subject, query = operation
                version, before = model.version(tenant, subject), h.service.calls["query"]
                check(
                    await h.ask(query, tenant=tenant, client=subject),
                    tenant,
                    subject,
                    query,
                    version,
                    before,
                )
            elif operation[0] == "invalidate":
                await invalidate(*operation[1])
            else:
                _, tenant, subject, query, invalidation = operation
                version, before = model.version(tenant, subject), h.service.calls["query"]
                entered, release = h.service.hold("race")
                task = asyncio.create_task(
                    h.ask(query, tenant=tenant, client=subject, headers={"X-Hold": "race"})
                )
                waiting = asyncio.create_task(entered.wait())
                await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
                waiting.cancel()
                if task.done():  # a hit: answered before the invalidation
                    check(task.result(), tenant, subject, query, version, before)
                    await invalidate(*invalidation)
                    continue
                await invalidate(*invalidation)  # while the computation runs
                release.set()
                check(await task, tenant, subject, query, version, before)
