"""`CacheGateMiddleware` on Starlette and FastAPI apps (httpx.ASGITransport) and raw ASGI apps,
on both stores: hit, miss, bypass, what is never stored, body replay, bad input, shadow, verify."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from support.apps import FRAMEWORKS, TENANT_HEADER, Harness, query_policy
from support.asgi import Exchange, Message, RecordingApp, drive, http_scope
from support.stores import CountingStore, metrics_for

from cachegate import (
    CacheGate,
    CacheGateMiddleware,
    Decision,
    Limits,
    Metrics,
    Mode,
    Normalization,
    Policy,
    StaticRollout,
    body_field,
    header,
    trusted_header,
)
from cachegate.responses import request_refuses_cache
from cachegate.store import MemoryStore, RedisStore, Store

pytestmark = pytest.mark.anyio

Build = Callable[..., Harness]


@pytest.fixture(params=FRAMEWORKS)
def framework(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def build(store: Store, namespace: str, framework: str) -> AsyncIterator[Build]:
    """Harnesses on this test's store and namespace (closed at the end)."""
    made: list[Harness] = []

    def make(**options: Any) -> Harness:
        options.setdefault("store", store)
        harness = Harness(namespace=namespace, framework=framework, **options)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        await harness.aclose()


async def stored_values(store: Store, namespace: str) -> list[bytes]:
    """Every value the store holds for this test (entries and generations)."""
    inner = store.inner if isinstance(store, CountingStore) else store
    if isinstance(inner, MemoryStore):
        return [v for v, _, _ in inner._items.values() if isinstance(v, bytes)]
    assert isinstance(inner, RedisStore)
    keys = [key async for key in inner.client.scan_iter(match=f"{namespace}:*")]  # every node
    return [v for v in await inner.get_many(keys) if v is not None]


def duration_count(h: Harness, path: str, route: str = "/ai/query") -> float:
    return h.sample("cachegate_query_duration_seconds_count", route=route, path=path)


# ---- hit, miss, bypass ---------------------------------------------------------------------


async def test_miss_then_hit_with_headers_and_metrics(build: Build) -> None:
    h = build()
    first = await h.ask()
    assert first.status_code == 200
    assert first.headers["x-cachegate"] == "miss"
    second = await h.ask()
    assert second.headers["x-cachegate"] == "hit"
    assert second.content == first.content
    assert second.json()["tenant"] == "t1"
    assert h.service.calls["query"] == 1
    assert (h.hits, h.misses) == (1, 1)
    assert duration_count(h, "miss") == 1
    assert duration_count(h, "hit") == 1
    assert h.sample("cachegate_fresh_calls_avoided_total", cache_layer="query_result") == 1
    assert h.sample("cachegate_decisions_total", cache_layer="query_result", mode="serve") == 2
    assert h.bypass_counts() == {}


async def test_a_hit_calls_the_app_zero_times_and_makes_one_store_round_trip(
    build: Build, store: Store
) -> None:
    counting = CountingStore(store)
    h = build(store=counting)
    await h.ask()
    assert counting.calls["lookup"] == 1
    assert counting.calls["write"] == 1
    counting.reset()
    calls = h.service.calls["query"]
    for _ in range(3):
        assert (await h.ask()).headers["x-cachegate"] == "hit"
    assert h.service.calls["query"] == calls
    assert counting.calls == {"lookup": 3}  # one round trip per hit, nothing else


async def test_mode_off_bypasses(build: Build) -> None:
    h = build(rollout=StaticRollout(Decision(l1=Mode.OFF)))
    for _ in range(2):
        response = await h.ask()
        assert response.headers["x-cachegate"] == "bypass"
    assert h.service.calls["query"] == 2
    assert h.bypass_counts() == {"mode_off": 2}
    assert duration_count(h, "bypass") == 2


async def test_a_failing_app_reaches_the_caller_and_nothing_is_stored(build: Build) -> None:
    h = build()
    h.service.failures = 1
    with pytest.raises(RuntimeError, match="model down"):
        await h.ask()
    assert len(h.gate.flights) == 0
    assert (await h.ask()).headers["x-cachegate"] == "miss"
    assert (await h.ask()).headers["x-cachegate"] == "hit"


# ---- what a hit replays ----------------------------------------------------------------------


async def test_hit_replays_status_headers_and_body_exactly(build: Build) -> None:
    h = build()
    first = await h.client.post("/r/ok", headers={TENANT_HEADER: "t1"})
    second = await h.client.post("/r/ok", headers={TENANT_HEADER: "t1"})
    assert (first.headers["x-cachegate"], second.headers["x-cachegate"]) == ("miss", "hit")
    assert second.status_code == first.status_code == 200
    assert second.content == first.content == b"ok #1"
    strip = {"x-cachegate", "content-length"}  # Content-Length is recomputed, sent last
    assert [(k, v) for k, v in second.headers.multi_items() if k not in strip] == [
        (k, v) for k, v in first.headers.multi_items() if k not in strip
    ]
    assert second.headers.get_list("content-length") == [str(len(second.content))]
    assert second.headers["x-custom"] == "kept"


async def test_hit_drops_hop_by_hop_headers_and_recomputes_content_length(namespace: str) -> None:
    sent_headers = [
        (b"content-type", b"text/plain"),
        (b"x-multi", b"1"),
        (b"Connection", b"keep-alive"),
        (b"keep-alive", b"timeout=5"),
        (b"proxy-authenticate", b"Basic"),
        (b"te", b"trailers"),
        (b"trailer", b"x-checksum"),
        (b"transfer-encoding", b"chunked"),
        (b"upgrade", b"h2c"),
        (b"date", b"Mon, 01 Jan 2024 00:00:00 GMT"),
        (b"content-length", b"999"),
        (b"x-multi", b"2"),
    ]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": sent_headers})
        await send({"type": "http.response.body", "body": b"hello"})

    gate = CacheGate(
        policies=[Policy("/x", tenant=trusted_header("x-tenant"))],
        namespace=namespace,
        metrics=Metrics(registry=CollectorRegistry()),
    )
    cached = CacheGateMiddleware(app, gate)
    headers = [(b"x-tenant", b"t1")]
    miss = await drive(cached, path="/x", headers=headers)
    assert miss.cachegate == "miss"
    hit = await drive(cached, path="/x", headers=headers)
    assert hit.cachegate == "hit"
    assert hit.status == 200
    assert hit.body == b"hello"
    assert hit.headers == [
        (b"content-type", b"text/plain"),
        (b"x-multi", b"1"),
        (b"x-multi", b"2"),
        (b"content-length", b"5"),
        (b"x-cachegate", b"hit"),
    ]
    assert [m["type"] for m in hit.messages] == ["http.response.start", "http.response.body"]


async def test_authorization_and_cookies_are_never_stored(
    build: Build, store: Store, namespace: str
) -> None:
    h = build()
    secret_headers = {
        "Authorization": "Bearer TOKEN-d41d8cd98f",
        "Cookie": "sid=COOKIE-9e107d9d372bb",
        "X-Api-Key": "KEY-e4d909c290d0fb1",
    }
    first = await h.ask(headers=secret_headers)
    assert first.headers["x-cachegate"] == "miss"
    seen = dict((k.decode(), v.decode()) for k, v in h.service.request_headers[-1])
    assert seen["authorization"] == secret_headers["Authorization"]  # the app did see them
    values = await stored_values(store, namespace)
    assert any(b'"tenant":"t1"' in v for v in values)  # the entry is there ...
    for value in values:
        for secret in ("TOKEN-d41d8cd98f", "COOKIE-9e107d9d372bb", "KEY-e4d909c290d0fb1"):
            assert secret.encode() not in value  # ... without any request header
        assert b"authorization" not in value.lower()
    hit = await h.ask(headers={"Authorization": "Bearer someone-else"})
    assert hit.headers["x-cachegate"] == "hit"
    assert "TOKEN" not in str(hit.headers)


# ---- never stored --------------------------------------------------------------------------

REFUSED = [
    ("created", 201, "status"),
    ("notfound", 404, "status"),
    ("error", 500, "status"),
    ("redirect", 302, "status"),
    ("cookie", 200, "set_cookie"),
    ("nocache", 200, "cache_control"),
    ("nostore", 200, "cache_control"),
    ("private", 200, "cache_control"),
    ("private2", 200, "cache_control"),
    ("vary", 200, "vary"),
    ("stream", 200, "streamed"),
    ("sse", 200, "streamed"),
    ("big", 200, "too_large"),
]


@pytest.mark.parametrize(("kind", "status", "reason"), REFUSED)
async def test_refused_responses_are_served_but_never_stored(
    build: Build, kind: str, status: int, reason: str
) -> None:
    h = build(limits=Limits(max_entry_bytes=2048))
    responses = [
        await h.client.post(f"/r/{kind}", headers={TENANT_HEADER: "t1"}, follow_redirects=False)
        for _ in range(2)
    ]
    assert h.service.calls[kind] == 2
    for number, response in enumerate(responses, start=1):
        assert response.status_code == status
        assert f"{kind} #{number}" in response.text  # each answer is the app's own
        assert response.headers.get("x-cachegate") != "hit"
    if kind == "sse":
        assert "x-cachegate" not in responses[0].headers  # passed through untouched
    elif kind == "stream":
        assert responses[1].text == "stream #2 part 1;part 2"
    assert h.uncacheable(reason) == 2
    assert h.hits == 0
    if kind == "cookie":
        assert responses[1].headers["set-cookie"].startswith("session=abc")


async def test_the_control_route_is_cached(build: Build) -> None:
    """The refusal routes differ from this one only in what their responses say."""
    h = build(limits=Limits(max_entry_bytes=2048))
    for expected in ("miss", "hit"):
        response = await h.client.post("/r/ok", headers={TENANT_HEADER: "t1"})
        assert response.headers["x-cachegate"] == expected


async def test_streamed_responses_pass_through_chunk_by_chunk(namespace: str) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"a", b"b", b"c"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    gate = CacheGate(
        policies=[Policy("/x", tenant=trusted_header("x-tenant"))],
        namespace=namespace,
        metrics=Metrics(registry=CollectorRegistry()),
    )
    for _ in range(2):
        exchange = await drive(
            CacheGateMiddleware(app, gate), path="/x", headers=[(b"x-tenant", b"t")]
        )
        bodies = [(m["body"], m["more_body"]) for m in exchange.messages[1:]]
        assert bodies == [(b"a", True), (b"b", True), (b"c", True), (b"", False)]
        assert exchange.cachegate == "miss"


@pytest.mark.parametrize("value", ["no-store", "no-cache", "max-age=0, No-Cache", "NO-STORE"])
async def test_request_cache_control_no_store_or_no_cache_bypasses(
    build: Build, value: str
) -> None:
    h = build()
    await h.ask()
    response = await h.ask(headers={"Cache-Control": value})
    assert response.headers["x-cachegate"] == "bypass"
    assert h.service.calls["query"] == 2
    assert h.bypassed("request_no_cache") == 1
    assert (await h.ask(headers={"Cache-Control": "max-age=60"})).headers["x-cachegate"] == "hit"


def test_request_no_cache_counts_in_any_of_several_cache_control_headers() -> None:
    several = [(b"cache-control", b"max-age=60"), (b"cache-control", b"private, no-cache")]
    assert request_refuses_cache(several)
    assert not request_refuses_cache([(b"cache-control", b"max-age=60, no-transform")])
    assert not request_refuses_cache([(b"pragma", b"no-cache"), (b"x-no-cache", b"no-cache")])


async def test_request_no_cache_can_be_ignored_per_policy(build: Build) -> None:
    h = build(policies=[query_policy(honor_request_no_cache=False)])
    await h.ask()
    response = await h.ask(headers={"Cache-Control": "no-cache"})
    assert response.headers["x-cachegate"] == "hit"


# ---- request bodies --------------------------------------------------------------------------

CHUNKED = [b'{"query": "wha', b"t about ", b'sleep?", "client', b'_id": "c1"}']


def recording_gate(namespace: str, **options: Any) -> CacheGate:
    return CacheGate(
        policies=[
            Policy(
                "/ai/query",
                tenant=trusted_header("x-tenant"),
                subject=body_field("client_id"),
                key={"query": body_field("query")},
            )
        ],
        namespace=namespace,
        metrics=options.pop("metrics", None) or metrics_for(options.get("store")),
        **options,
    )


def sent_messages(chunks: list[bytes]) -> list[Message]:
    return [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]


async def test_chunked_body_is_replayed_exactly_then_disconnect_passes_through(
    store: Store, namespace: str
) -> None:
    app = RecordingApp()
    gate = recording_gate(namespace, store=store)
    cached = CacheGateMiddleware(app, gate)
    headers = [(b"x-tenant", b"t1")]
    miss = await drive(cached, headers=headers, chunks=CHUNKED)
    assert miss.cachegate == "miss"
    assert app.received == [sent_messages(CHUNKED)]  # every chunk, in order, as sent
    assert app.after_body == [{"type": "http.disconnect"}]  # from the server, passed through
    assert miss.json()["length"] == len(b"".join(CHUNKED))
    # the middleware understood the chunked body: the same question in one chunk is a hit
    hit = await drive(cached, headers=headers, chunks=[b"".join(CHUNKED)])
    assert hit.cachegate == "hit"
    assert hit.body == miss.body
    assert app.calls == 1


async def test_chunked_body_reaches_starlette_and_fastapi_endpoints(build: Build) -> None:
    h = build()
    headers = [(b"x-tenant", b"t1"), (b"content-type", b"application/json")]
    exchange = await drive(h.app, headers=headers, chunks=CHUNKED)
    assert exchange.cachegate == "miss"
    assert h.service.bodies == [b"".join(CHUNKED)]
    assert exchange.json()["query"] == "what about sleep?"
    again = await drive(h.app, headers=headers, chunks=[*CHUNKED[:1], b"".join(CHUNKED[1:])])
    assert again.cachegate == "hit"


async def test_body_over_the_cap_bypasses_and_the_app_still_gets_all_of_it(
    store: Store, namespace: str
) -> None:
    metrics = metrics_for(store)
    registry = metrics.registry
    assert registry is not None
    app = RecordingApp()
    gate = recording_gate(
        namespace, store=store, limits=Limits(max_body_bytes=100), metrics=metrics
    )
    body = json.dumps({"query": "q" * 500, "client_id": "c1"}).encode()
    chunks = [body[i : i + 37] for i in range(0, len(body), 37)]
    exchange = await drive(
        CacheGateMiddleware(app, gate), headers=[(b"x-tenant", b"t")], chunks=chunks
    )
    assert exchange.cachegate == "bypass"
    assert app.received == [sent_messages(chunks)]
    assert exchange.json()["length"] == len(body)
    assert app.after_body == [{"type": "http.disconnect"}]
    assert registry.get_sample_value("cachegate_bypasses_total", {"reason": "body_too_large"}) == 1


async def test_a_client_that_leaves_mid_body_bypasses(namespace: str) -> None:
    app = RecordingApp(wait_for_disconnect=False)
    gate = recording_gate(namespace)
    messages: list[Message] = [
        {"type": "http.request", "body": b'{"query": "x', "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> Message:
        return messages.pop(0)

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await CacheGateMiddleware(app, gate)(http_scope(headers=[(b"x-tenant", b"t")]), receive, send)
    assert app.received[0][-1] == {"type": "http.disconnect"}
    assert (b"x-cachegate", b"bypass") in sent[0]["headers"]


async def test_routes_without_a_policy_are_untouched(namespace: str) -> None:
    app = RecordingApp()
    gate = recording_gate(namespace)
    middleware = CacheGateMiddleware(app, gate)
    done: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"{}"} if not done else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        done.append(message)

    for method, path in (("POST", "/other"), ("GET", "/ai/query"), ("POST", "/ai/query/x")):
        done.clear()
        scope = http_scope(method, path, [(b"x-tenant", b"t")])
        before = dict(scope)
        await middleware(scope, receive, send)
        assert app.receives[-1] is receive  # the original receive and send, not wrappers
        assert app.sends[-1] is send
        assert app.scopes[-1] is scope
        assert scope == before  # no state added
        assert all(k != b"x-cachegate" for k, _ in done[0]["headers"])

    lifespan_calls: list[Any] = []

    async def lifespan_app(scope: Any, receive: Any, send: Any) -> None:
        lifespan_calls.append((scope["type"], receive, send))

    await CacheGateMiddleware(lifespan_app, gate)({"type": "websocket"}, receive, send)
    assert lifespan_calls == [("websocket", receive, send)]
    # lifespan: the same send; receive starts the gate and flushes invalidations on the way
    await CacheGateMiddleware(lifespan_app, gate)({"type": "lifespan"}, receive, send)
    assert lifespan_calls[-1][0] == "lifespan" and lifespan_calls[-1][2] is send


async def test_unmatched_routes_pass_through_frameworks_without_a_header(build: Build) -> None:
    h = build()
    response = await h.client.post("/plain", content=b"hi", headers={TENANT_HEADER: "t1"})
    assert response.text == "plain hi"
    assert "x-cachegate" not in response.headers
    assert h.bypass_counts() == {}


# ---- scope isolation -------------------------------------------------------------------------


async def test_two_tenants_asking_the_same_never_get_each_others_answer(build: Build) -> None:
    h = build()
    for round_ in range(3):
        for tenant in ("t1", "t2"):
            response = await h.ask("same question", tenant=tenant, client="c1")
            assert response.json()["tenant"] == tenant
            assert response.headers["x-cachegate"] == ("miss" if round_ == 0 else "hit")
    assert h.service.calls["query"] == 2


async def test_two_subjects_of_one_tenant_are_separate(build: Build) -> None:
    h = build()
    for client in ("c1", "c2", None, "c1", "c2", None):
        response = await h.ask("same question", client=client)
        assert response.json()["client"] == client
    assert h.service.calls["query"] == 3


async def test_tenant_isolation_holds_across_gates_sharing_a_store(build: Build) -> None:
    """Two processes (gates) on one store: still per tenant."""
    first, second = build(), build()
    a = await first.ask("q", tenant="t1")
    b = await second.ask("q", tenant="t2")
    assert a.json()["tenant"] == "t1" and b.json()["tenant"] == "t2"
    hit = await second.ask("q", tenant="t1")
    assert hit.headers["x-cachegate"] == "hit"
    assert hit.json()["tenant"] == "t1"


# ---- bad input -------------------------------------------------------------------------------

BAD_INPUT = [
    # name, body, extra headers, expected app status, reason
    ("invalid_json", b'{"query": "sleep', {}, 400, "invalid_json"),
    ("non_utf8", b'{"query": "\xff\xfe sleep"}', {}, 400, "invalid_utf8"),
    ("missing_tenant", b'{"query": "sleep"}', {TENANT_HEADER: None}, 401, "no_tenant"),
    ("empty_tenant", b'{"query": "sleep"}', {TENANT_HEADER: ""}, 401, "empty_value"),
    ("oversized", json.dumps({"query": "s" * 5000}).encode(), {}, 200, "body_too_large"),
    ("huge_headers", b'{"query": "sleep"}', {"X-Padding": "p" * 20_000}, 200, "headers_too_large"),
    ("odd_subject", b'{"query": "sleep", "client_id": {"a": 1}}', {}, 200, "invalid_value"),
    ("nan", b'{"query": NaN, "client_id": "c"}', {}, 200, "extractor_error"),
]


@pytest.mark.parametrize(
    ("body", "headers", "status", "reason"),
    [case[1:] for case in BAD_INPUT],
    ids=[case[0] for case in BAD_INPUT],
)
async def test_bad_input_bypasses_with_its_reason(
    build: Build, body: bytes, headers: dict[str, str | None], status: int, reason: str
) -> None:
    h = build(limits=Limits(max_body_bytes=4096))
    sent = {TENANT_HEADER: "t1", "content-type": "application/json"}
    for name, value in headers.items():
        if value is None:
            del sent[name]
        else:
            sent[name] = value
    for _ in range(2):
        response = await h.client.post("/ai/query", content=body, headers=sent)
        assert response.status_code == status
        assert response.headers["x-cachegate"] == "bypass"
    assert h.service.bodies == [body, body]  # the app got the body, untouched
    assert h.bypass_counts() == {reason: 2}
    assert (h.hits, h.misses) == (0, 0)


@pytest.mark.parametrize("normalization", [Normalization.EXACT, Normalization.LOOSE])
async def test_deeply_nested_key_material_bypasses(
    build: Build, normalization: Normalization
) -> None:
    h = build(policies=[query_policy(normalization=normalization)])
    depth = 600  # parses, but normalising or encoding it recurses too deep
    body = b'{"client_id": "c1", "query": ' + b"[" * depth + b"]" * depth + b"}"
    response = await h.client.post("/ai/query", content=body, headers={TENANT_HEADER: "t1"})
    assert response.status_code == 200
    assert response.headers["x-cachegate"] in {"bypass", "miss"}
    assert h.service.bodies == [body]
    if response.headers["x-cachegate"] == "bypass":
        assert h.bypass_counts() == {"extractor_error": 1}


async def test_an_extractor_that_raises_bypasses(build: Build) -> None:
    def tenant_of(request: Any) -> str:
        raise KeyError("no user")

    h = build(policies=[Policy("/ai/query", tenant=tenant_of)])
    response = await h.ask()
    assert response.status_code == 200
    assert response.headers["x-cachegate"] == "bypass"
    assert h.bypass_counts() == {"extractor_error": 1}


# ---- shadow and verify -----------------------------------------------------------------------


async def test_shadow_serves_fresh_says_shadow_hit_or_miss_counts_and_compares(
    build: Build,
) -> None:
    h = build(rollout=StaticRollout(Decision(l1=Mode.SHADOW)))
    first = await h.ask()
    assert first.headers["x-cachegate"] == "shadow-miss"
    second = await h.ask()
    assert second.headers["x-cachegate"] == "shadow-hit"
    assert h.service.calls["query"] == 2  # fresh is always computed and served
    shadow = "cachegate_shadow_lookups_total"
    assert h.sample(shadow, cache_layer="query_result", result="miss") == 1
    assert h.sample(shadow, cache_layer="query_result", result="hit") == 1
    comparisons = "cachegate_comparisons_total"
    labels = {"cache_layer": "query_result", "kind": "shadow"}
    assert h.sample(comparisons, **labels, outcome="match") == 1

    h.service.version = 2  # the data changed and nothing invalidated: the cache is stale
    third = await h.ask()
    assert third.headers["x-cachegate"] == "shadow-hit"
    assert third.json()["version"] == 2  # fresh served, not the stale entry
    assert h.sample(comparisons, **labels, outcome="mismatch") == 1
    [mismatch] = h.gate.mismatches.recent()
    assert mismatch.kind == "shadow" and mismatch.route == "/ai/query"
    assert mismatch.cached_length == len(second.content)
    assert (await h.ask()).headers["x-cachegate"] == "shadow-hit"
    assert h.sample(comparisons, **labels, outcome="match") == 2  # refilled with the fresh one
    assert h.hits == 0
    assert duration_count(h, "shadow") == 4


async def test_serve_and_verify_rechecks_hits_in_the_background(build: Build) -> None:
    h = build(
        policies=[query_policy(rerun_safe=True)],
        rollout=StaticRollout(Decision(l1=Mode.SERVE, verify=True)),
    )
    labels = {"cache_layer": "query_result", "kind": "verify"}
    await h.ask()
    hit = await h.ask()
    assert hit.headers["x-cachegate"] == "hit"
    await h.gate.drain()
    assert h.service.calls["query"] == 2  # recomputed once, in the background
    assert h.sample("cachegate_comparisons_total", **labels, outcome="match") == 1

    h.service.version = 2
    stale = await h.ask()
    assert stale.headers["x-cachegate"] == "hit"
    assert stale.json()["version"] == 1
    await h.gate.drain()
    assert h.sample("cachegate_comparisons_total", **labels, outcome="mismatch") == 1
    fresh = await h.ask()  # the stale entry was dropped
    assert fresh.headers["x-cachegate"] == "miss"
    assert fresh.json()["version"] == 2


async def test_verify_never_reruns_a_route_that_is_not_rerun_safe(build: Build) -> None:
    h = build(rollout=StaticRollout(Decision(l1=Mode.SERVE, verify=True)))
    await h.ask()
    assert (await h.ask()).headers["x-cachegate"] == "hit"
    await h.gate.drain()
    assert h.service.calls["query"] == 1


async def test_the_decision_reaches_the_app(store: Store, namespace: str) -> None:
    from cachegate import current_decision

    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((current_decision(), scope["state"]["cachegate"]))
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    decision = Decision(l1=Mode.SERVE, l2=Mode.SHADOW)
    gate = CacheGate(
        policies=[Policy("/x", tenant=trusted_header("x-tenant"))],
        store=store,
        namespace=namespace,
        rollout=StaticRollout(decision),
        metrics=metrics_for(store),
    )
    exchange: Exchange = await drive(
        CacheGateMiddleware(app, gate), path="/x", headers=[(b"x-tenant", b"t")]
    )
    assert exchange.cachegate == "miss"
    assert seen == [(decision, decision)]
    assert current_decision() is None


async def test_key_material_from_query_parameters_headers_and_path(namespace: str) -> None:
    from cachegate import path_param, query_param

    app = RecordingApp()
    gate = CacheGate(
        policies=[
            Policy(
                "/docs/{doc_id}/summary",
                tenant=trusted_header("x-tenant"),
                methods=frozenset({"GET"}),
                key={
                    "doc": path_param("doc_id"),
                    "lang": query_param("lang"),
                    "model": header("x-model"),
                },
            )
        ],
        namespace=namespace,
        metrics=Metrics(registry=CollectorRegistry()),
    )
    cached = CacheGateMiddleware(app, gate)

    async def get(doc: str, query: bytes, model: bytes, tenant: bytes = b"t1") -> str | None:
        exchange = await drive(
            cached,
            method="GET",
            path=f"/docs/{doc}/summary",
            query_string=query,
            headers=[(b"x-tenant", tenant), (b"x-model", model)],
        )
        return exchange.cachegate

    assert await get("d1", b"lang=en", b"m1") == "miss"
    assert await get("d1", b"lang=en&other=ignored", b"m1") == "hit"  # not key material
    assert await get("d1", b"lang=de", b"m1") == "miss"
    assert await get("d2", b"lang=en", b"m1") == "miss"
    assert await get("d1", b"lang=en", b"m2") == "miss"
    assert await get("d1", b"lang=en", b"m1", tenant=b"t2") == "miss"
    assert await get("d1", b"lang=en", b"m1") == "hit"
    assert app.calls == 5
