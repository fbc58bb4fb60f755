"""Admission: a request whose layer is off is passed on before its body is read (unless the
tenant is in the body), and `CacheGate.keys_for` names the keys the middleware uses."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from support.asgi import Message, drive, http_scope

from cachegate import (
    CacheGate,
    CacheGateMiddleware,
    Decision,
    Metrics,
    Mode,
    Policy,
    StaticRollout,
    as_int,
    authenticated,
    body_field,
    path_param,
    query_param,
    trusted_header,
)
from cachegate.extractors import BadRequest, reads_body
from cachegate.store import MemoryStore
from cachegate.types import Receive, Scope, Send
from cachegate.vocabulary import BypassReason

pytestmark = pytest.mark.anyio

OFF = StaticRollout(Decision(Mode.OFF, Mode.OFF))


class BodyFirstApp:
    """Records whether the middleware had already called `receive` when the app started,
    then reads the whole body itself and answers it back."""

    def __init__(self) -> None:
        self.received_before_app: list[int] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        calls: int = scope["test.receive_calls"][0]
        self.received_before_app.append(calls)
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


async def call(app: Any, headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> bytes:
    counter = [0]
    pending: list[Message] = [
        {"type": "http.request", "body": chunk, "more_body": index < len(chunks) - 1}
        for index, chunk in enumerate(chunks)
    ]

    async def receive() -> Message:
        counter[0] += 1
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/q",
        "headers": headers,
        "query_string": b"",
        "test.receive_calls": counter,
    }
    exchange = await drive(app, scope=scope, receive=receive)
    assert exchange.cachegate == "bypass"
    return exchange.body


def gate(policy: Policy, rollout: StaticRollout = OFF) -> CacheGate:
    return CacheGate(
        policies=[policy], rollout=rollout, metrics=Metrics(registry=CollectorRegistry())
    )


async def test_a_layer_off_passes_the_request_on_without_reading_its_body() -> None:
    app = BodyFirstApp()
    policy = Policy("/q", tenant=trusted_header("x-tenant"), key={"q": body_field("q")})
    middleware = CacheGateMiddleware(app, gate(policy))
    chunks = [b'{"q": ', b'"a question"}']
    body = await call(middleware, [(b"x-tenant", b"t1")], chunks)
    assert body == b"".join(chunks)
    assert app.received_before_app == [0]


async def test_a_tenant_in_the_body_is_read_first_and_the_app_still_gets_all_of_it() -> None:
    app = BodyFirstApp()
    tenant = body_field("ws")
    policy = Policy("/q", tenant=tenant, key={"q": body_field("q")}, guard=lambda _: True)
    middleware = CacheGateMiddleware(app, gate(policy))
    chunks = [b'{"ws": "t1", ', b'"q": "x"}']
    body = await call(middleware, [], chunks)
    assert body == b"".join(chunks)
    assert app.received_before_app[0] > 0


def test_which_extractors_read_the_body() -> None:
    assert not reads_body(trusted_header("x-tenant"))
    assert not reads_body(authenticated("tenant"))
    assert not reads_body(as_int(path_param("id")))
    assert reads_body(body_field("ws"))
    assert reads_body(as_int(body_field("client_id")))
    assert reads_body(lambda request: request.json().get("ws"))  # unknown: assumed to


async def test_keys_for_names_the_key_a_miss_is_stored_under() -> None:
    store = MemoryStore()
    policy = Policy(
        "/notes/{note_id}",
        tenant=trusted_header("x-tenant"),
        subject=body_field("client_id"),
        key={"q": body_field("q")},
    )
    cache = CacheGate(policies=[policy], store=store, metrics=Metrics(registry=CollectorRegistry()))
    body = json.dumps({"q": "summary", "client_id": "c1"}).encode()
    headers = [(b"x-tenant", b"t1")]

    async def answer(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body", False):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"an answer"})

    middleware = CacheGateMiddleware(answer, cache)
    exchange = await drive(middleware, path="/notes/7", headers=headers, chunks=[body])
    assert exchange.cachegate == "miss"

    facts = cache.keys_for("POST", "/notes/7", headers=headers, body=body)
    assert (facts.scope.tenant, facts.scope.subject) == ("t1", "c1")
    assert (await store.lookup(facts.key, ())).value is not None
    other = cache.keys_for("POST", "/notes/8", headers=headers, body=body)
    assert other.key != facts.key  # path parameters are key material
    assert other.generation_keys == facts.generation_keys


def test_keys_for_says_why_a_request_has_no_keys() -> None:
    policy = Policy("/q", tenant=trusted_header("x-tenant"), key={"q": body_field("q")})
    cache = gate(policy)
    with pytest.raises(LookupError):
        cache.keys_for("POST", "/elsewhere")
    with pytest.raises(BadRequest) as no_tenant:
        cache.keys_for("POST", "/q", body=b'{"q": "x"}')
    assert no_tenant.value.reason is BypassReason.NO_TENANT
    with pytest.raises(BadRequest) as not_json:
        cache.keys_for("POST", "/q", headers=[(b"x-tenant", b"t")], body=b"{")
    assert not_json.value.reason is BypassReason.INVALID_JSON


class Counted:
    """A `receive` that counts its calls: the server's messages, then a disconnect."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.calls = 0
        self.pending: list[Message] = [
            {"type": "http.request", "body": chunk, "more_body": index < len(chunks) - 1}
            for index, chunk in enumerate(chunks)
        ]

    async def __call__(self) -> Message:
        self.calls += 1
        return self.pending.pop(0) if self.pending else {"type": "http.disconnect"}


def _guard(request: Any) -> bool:
    return True


GET_POLICY = Policy(
    "/q",
    tenant=trusted_header("x-tenant"),
    key={"q": query_param("q")},
    methods=frozenset({"GET"}),
    rerun_safe=True,
)


async def _hit_reads(
    policy: Policy, headers: list[tuple[bytes, bytes]], chunks: list[bytes], version: str
) -> tuple[int, int]:
    """How often the middleware called `receive` on a miss and on the hit after it."""
    app = BodyFirstApp()
    middleware = CacheGateMiddleware(app, gate(policy, StaticRollout(Decision(Mode.SERVE))))
    calls = []
    for expected in ("miss", "hit"):
        receive = Counted(chunks)
        scope = http_scope("GET", "/q", [(b"x-tenant", b"t1"), *headers], b"q=a")
        scope |= {"http_version": version, "test.receive_calls": [0]}
        exchange = await drive(middleware, scope=scope, receive=receive)
        assert exchange.cachegate == expected
        calls.append(receive.calls)
    return calls[0], calls[1]


@pytest.mark.parametrize("version", ["1.1", "1.0"])
@pytest.mark.parametrize("headers", [[], [(b"content-length", b"0")]])
async def test_a_request_that_declares_no_body_is_served_without_reading_it(
    version: str, headers: list[tuple[bytes, bytes]]
) -> None:
    on_miss, on_hit = await _hit_reads(GET_POLICY, headers, [b""], version)
    assert on_hit == 0
    assert on_miss == 1  # the app read the server's own message


@pytest.mark.parametrize(
    ("policy", "headers", "chunks", "version"),
    [
        (GET_POLICY, [(b"content-length", b"2")], [b"{}"], "1.1"),
        (GET_POLICY, [(b"transfer-encoding", b"chunked")], [b"{", b"}"], "1.1"),
        (GET_POLICY, [], [b""], "2"),
        (replace(GET_POLICY, guard=_guard), [], [b""], "1.1"),
        (replace(GET_POLICY, key={"q": body_field("q")}), [], [b'{"q": "a"}'], "1.1"),
    ],
    ids=["content-length", "chunked", "http2", "guard", "body-key"],
)
async def test_a_body_that_may_matter_is_read_before_a_hit(
    policy: Policy, headers: list[tuple[bytes, bytes]], chunks: list[bytes], version: str
) -> None:
    _, on_hit = await _hit_reads(policy, headers, chunks, version)
    assert on_hit == len(chunks)


async def test_a_verify_rerun_of_an_unread_body_gets_the_empty_body() -> None:
    reruns: list[list[Message]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        messages = [await receive()]
        reruns.append(messages)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"answer"})

    verify = StaticRollout(Decision(Mode.SERVE, verify=True))
    cache = gate(GET_POLICY, verify)
    middleware = CacheGateMiddleware(app, cache)
    for expected in ("miss", "hit"):
        scope = http_scope("GET", "/q", [(b"x-tenant", b"t1")], b"q=a")
        exchange = await drive(middleware, scope=scope, receive=Counted([b""]))
        assert exchange.cachegate == expected
    await cache.drain()  # the background verification
    await cache.aclose()
    assert reruns == [[{"type": "http.request", "body": b"", "more_body": False}]] * 2
