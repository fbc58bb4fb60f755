"""A hit is served only to a request the app would have answered the same way, for the same
tenant and subject: tried as an attacker would, on `MemoryStore` and the real Redis.

Each test here failed on the code before the security work (issue #10): repeated parameters,
hits that skipped FastAPI's `Depends` auth and validation, subjects the app and the cache read
differently, unkeyed path parameters, guessable digests, request data on spans, L2 outside the
rollout, do-not-store signals, and L2 misses that differed from hits.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from conftest import delete_namespace
from fastapi import Depends, FastAPI, Header, HTTPException
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.trace import ReadableSpan
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.datastructures import QueryParams
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from support.spans import recording_spans
from support.stores import fresh_metrics, metrics_for

from cachegate import (
    CacheGate,
    CacheGateMiddleware,
    Policy,
    WriteRule,
    as_int,
    authenticated,
    body_field,
    header,
    path_param,
    query_param,
    trusted_header,
)
from cachegate.keys import CacheScope, KeySpace
from cachegate.policy import BadRequest, RequestView
from cachegate.store import MemoryStore, RedisStore, Store

pytestmark = pytest.mark.anyio


def gate_for(store: Store, namespace: str, *policies: Policy, **options: Any) -> CacheGate:
    return CacheGate(
        policies=policies,
        store=store,
        namespace=namespace,
        metrics=metrics_for(store),
        **options,
    )


def bypasses(gate: CacheGate, reason: str) -> float:
    gate.metrics.tallies.flush()  # the request path's counts, as a scrape would see them
    return float(gate.metrics.bypasses.labels(reason)._value.get())


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app")


def echo_app(read: Callable[[Request], Awaitable[dict[str, Any]]]) -> Starlette:
    """One route that answers with what `read` says the app read of the request."""

    async def ask(request: Request) -> JSONResponse:
        return JSONResponse(await read(request))

    return Starlette(routes=[Route("/ask", ask, methods=["GET", "POST"]), Route("/c/{cid}/s", ask)])


# --- 1. repeated query parameters and headers ------------------------------------------------


async def test_a_repeated_query_parameter_is_never_guessed(l1_store: Store, namespace: str) -> None:
    async def read(request: Request) -> dict[str, Any]:
        # Starlette (and FastAPI's Query()) read the last occurrence
        return {"ws": request.query_params["ws"], "q": request.query_params["q"]}

    policy = Policy(
        "/ask",
        tenant=query_param("ws"),
        guard=lambda request: True,
        key={"q": query_param("q")},
        methods=frozenset({"GET"}),
    )
    gate = gate_for(l1_store, namespace, policy)
    app = CacheGateMiddleware(echo_app(read), gate)
    async with client_for(app) as client:
        assert (await client.get("/ask?ws=A&q=x")).headers["x-cachegate"] == "miss"
        assert (await client.get("/ask?ws=A&q=x")).headers["x-cachegate"] == "hit"
        as_b = await client.get("/ask?ws=A&ws=B&q=x")
        evil = await client.get("/ask?ws=A&q=x&q=EVIL")
    assert as_b.headers["x-cachegate"] == "bypass"
    assert as_b.json() == {"ws": "B", "q": "x"}
    assert evil.headers["x-cachegate"] == "bypass"
    assert evil.json() == {"ws": "A", "q": "EVIL"}
    assert bypasses(gate, "ambiguous_value") == 2
    await gate.aclose()


async def test_a_repeated_header_is_never_guessed(l1_store: Store, namespace: str) -> None:
    async def read(request: Request) -> dict[str, Any]:
        return {"lang": request.headers.getlist("x-lang")}

    policy = Policy("/ask", tenant=trusted_header("x-ws"), key={"lang": header("x-lang")})
    gate = gate_for(l1_store, namespace, policy)
    async with client_for(CacheGateMiddleware(echo_app(read), gate)) as client:
        once = [(b"x-ws", b"w"), (b"x-lang", b"en")]
        assert (await client.post("/ask", headers=once)).headers["x-cachegate"] == "miss"
        twice = [*once, (b"x-lang", b"de")]
        response = await client.post("/ask", headers=twice)
        tenant_twice = [(b"x-ws", b"w"), (b"x-ws", b"v"), (b"x-lang", b"en")]
        other = await client.post("/ask", headers=tenant_twice)
    assert response.headers["x-cachegate"] == "bypass"
    assert response.json() == {"lang": ["en", "de"]}
    assert other.headers["x-cachegate"] == "bypass"
    await gate.aclose()


async def test_a_write_with_an_ambiguous_tenant_invalidates_every_candidate(
    l1_store: Store, namespace: str
) -> None:
    async def read(request: Request) -> dict[str, Any]:
        return {"ws": request.query_params["ws"]}

    async def write(request: Request) -> Response:
        return JSONResponse({"written": request.query_params["ws"]}, status_code=201)

    policy = Policy("/ask", tenant=query_param("ws"), guard=lambda r: True)
    rule = WriteRule("/notes", tenant=query_param("ws"))
    gate = CacheGate(
        policies=[policy],
        write_rules=[rule],
        store=l1_store,
        namespace=namespace,
        metrics=metrics_for(l1_store),
    )
    app = echo_app(read)
    app.router.routes.append(Route("/notes", write, methods=["POST"]))
    async with client_for(CacheGateMiddleware(app, gate)) as client:
        for ws in ("A", "B"):
            await client.post(f"/ask?ws={ws}")
            assert (await client.post(f"/ask?ws={ws}")).headers["x-cachegate"] == "hit"
        assert (await client.post("/notes?ws=A&ws=B")).status_code == 201
        after = [(await client.post(f"/ask?ws={ws}")).headers["x-cachegate"] for ws in "AB"]
    assert after == ["miss", "miss"]
    await gate.aclose()


# --- 2. a hit never skips the app's own auth and validation -----------------------------------

TOKENS = {"token-alice": ("alice", "w1"), "token-bob": ("bob", "w2")}


class Question(BaseModel):
    query: str
    client_id: int | None = None


def fastapi_app() -> tuple[FastAPI, list[str]]:
    """An app whose auth is a `Depends` (403 without a known bearer token) and whose body is a
    pydantic model (422 for anything else)."""
    app = FastAPI()
    computed: list[str] = []

    def current_user(authorization: str | None = Header(default=None)) -> tuple[str, str]:
        token = (authorization or "").removeprefix("Bearer ")
        if token not in TOKENS:
            raise HTTPException(status_code=403, detail="not authenticated")
        return TOKENS[token]

    @app.post("/ai/query")
    async def ask(
        question: Question, user: tuple[str, str] = Depends(current_user)
    ) -> dict[str, Any]:
        computed.append(question.query)
        return {"workspace": user[1], "answer": f"about {question.query} for {question.client_id}"}

    return app, computed


class TokenBackend(AuthenticationBackend):
    """The same tokens, verified once by an authentication middleware outside CacheGate."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        token = conn.headers.get("authorization", "").removeprefix("Bearer ")
        if token not in TOKENS:
            return None
        user = SimpleUser(TOKENS[token][0])
        user.workspace = TOKENS[token][1]  # type: ignore[attr-defined]
        return AuthCredentials(["authenticated"]), user


def authenticated_gate(store: Store, namespace: str, **options: Any) -> CacheGate:
    policy = Policy(
        "/ai/query",
        tenant=authenticated("workspace"),
        subject=as_int(body_field("client_id")),
        key={"query": body_field("query")},
        **options,
    )
    return gate_for(store, namespace, policy)


async def test_fastapi_depends_auth_and_validation_are_never_skipped_by_a_hit(
    l1_store: Store, namespace: str
) -> None:
    app, computed = fastapi_app()
    gate = authenticated_gate(l1_store, namespace)
    app.add_middleware(CacheGateMiddleware, gate=gate)
    app.add_middleware(AuthenticationMiddleware, backend=TokenBackend())
    alice = {"authorization": "Bearer token-alice"}
    body = {"query": "sleep", "client_id": 7}
    async with client_for(app) as client:
        assert (await client.post("/ai/query", json=body, headers=alice)).headers[
            "x-cachegate"
        ] == "miss"
        hit = await client.post("/ai/query", json=body, headers=alice)
        assert hit.headers["x-cachegate"] == "hit"
        anonymous = await client.post("/ai/query", json=body)
        forged = await client.post("/ai/query", json=body, headers={"authorization": "Bearer x"})
        plain = await client.post(
            "/ai/query",
            content=json.dumps(body),
            headers={**alice, "content-type": "text/plain"},
        )
        bob = await client.post(
            "/ai/query", json=body, headers={"authorization": "Bearer token-bob"}
        )
    assert (anonymous.status_code, forged.status_code) == (403, 403)
    assert plain.status_code == 422
    for refused in (anonymous, forged, plain):
        assert refused.headers["x-cachegate"] == "bypass"
    assert bob.headers["x-cachegate"] == "miss"
    assert bob.json()["workspace"] == "w2"
    assert computed == ["sleep", "sleep"]
    assert bypasses(gate, "no_tenant") == 2
    assert bypasses(gate, "not_json") == 1
    await gate.aclose()


async def test_without_an_authentication_middleware_outside_nothing_is_cached(
    l1_store: Store, namespace: str
) -> None:
    app, computed = fastapi_app()
    gate = authenticated_gate(l1_store, namespace)
    app.add_middleware(CacheGateMiddleware, gate=gate)
    alice = {"authorization": "Bearer token-alice"}
    async with client_for(app) as client:
        for _ in range(2):
            response = await client.post("/ai/query", json={"query": "q"}, headers=alice)
            assert response.headers["x-cachegate"] == "bypass"
    assert bypasses(gate, "no_authentication") == 2
    assert len(computed) == 2
    await gate.aclose()


async def test_a_guard_that_refuses_lets_the_app_decide(l1_store: Store, namespace: str) -> None:
    app, _computed = fastapi_app()

    def may_ask(request: Any) -> bool:
        token = (request.header("authorization") or "").removeprefix("Bearer ")
        return token in TOKENS and TOKENS[token][1] == request.header("x-workspace-id")

    async def failing(request: Any) -> bool:
        raise RuntimeError("auth backend down")

    policy = Policy(
        "/ai/query", tenant=header("x-workspace-id"), key={"q": body_field("query")}, guard=may_ask
    )
    gate = gate_for(l1_store, namespace, policy)
    app.add_middleware(CacheGateMiddleware, gate=gate)
    alice = {"authorization": "Bearer token-alice", "x-workspace-id": "w1"}
    async with client_for(app) as client:
        await client.post("/ai/query", json={"query": "q"}, headers=alice)
        assert (await client.post("/ai/query", json={"query": "q"}, headers=alice)).headers[
            "x-cachegate"
        ] == "hit"
        intruder = {"authorization": "Bearer token-bob", "x-workspace-id": "w1"}
        refused = await client.post("/ai/query", json={"query": "q"}, headers=intruder)
        anonymous = await client.post(
            "/ai/query", json={"query": "q"}, headers={"x-workspace-id": "w1"}
        )
    assert refused.headers["x-cachegate"] == "bypass"
    assert refused.json()["workspace"] == "w2"
    assert anonymous.status_code == 403
    assert bypasses(gate, "guard_refused") == 2
    await gate.aclose()

    erring = gate_for(
        MemoryStore(),
        namespace,
        Policy("/ai/query", tenant=trusted_header("x-workspace-id"), guard=failing),
    )
    app2, _ = fastapi_app()
    app2.add_middleware(CacheGateMiddleware, gate=erring)
    async with client_for(app2) as client:
        response = await client.post("/ai/query", json={"query": "q"}, headers=alice)
    assert response.status_code == 200
    assert response.headers["x-cachegate"] == "bypass"
    assert bypasses(erring, "guard_error") == 1


@pytest.mark.parametrize(
    "tenant",
    [header("X-Workspace-ID"), query_param("ws"), body_field("ws"), path_param("ws")],
    ids=repr,
)
def test_a_client_chosen_tenant_without_a_guard_is_refused_at_configuration(
    tenant: Any,
) -> None:
    with pytest.raises(ValueError, match="not an identity"):
        Policy("/ask/{ws}", tenant=tenant)
    Policy("/ask/{ws}", tenant=tenant, guard=lambda request: True)
    Policy("/ask/{ws}", tenant=trusted_header("X-Workspace-ID"))


# --- 3. the cache and the app agree on who the subject is -------------------------------------


async def test_the_demo_never_keys_a_subject_its_app_reads_as_no_client(
    l1_store: Store, namespace: str
) -> None:
    from test_demo import demo

    app, registry = demo(l1_store, namespace)
    workspace = {"X-Workspace-ID": "ws-sec"}
    question = "What did the client say about sleep?"
    async with client_for(app) as client:
        outcomes = {}
        for label, client_id in (("int", 7), ("empty", ""), ("object", {"id": 1})):
            body = {"query": question, "client_id": client_id}
            await client.post("/ai/query", json=body, headers=workspace)
            second = await client.post("/ai/query", json=body, headers=workspace)
            outcomes[label] = second.headers["x-cachegate"]
        for body in ([1, 2, 3], "query", 12):
            response = await client.post("/ai/query", json=body, headers=workspace)
            assert response.headers.get("x-cachegate") == "bypass"
        before = await client.post(
            "/ai/query", json={"query": question, "client_id": 7}, headers=workspace
        )
        write = await client.post(
            "/sessions",
            json={"client_id": "c-other", "notes": "Sleep got much better after the new routine."},
            headers=workspace,
        )
        assert write.status_code == 201
        after = await client.post(
            "/ai/query", json={"query": question, "client_id": 7}, headers=workspace
        )
    assert outcomes == {"int": "bypass", "empty": "bypass", "object": "bypass"}
    assert after.headers["x-cachegate"] == "bypass"
    assert after.json() != before.json()

    def counted(reason: str) -> float | None:
        return registry.get_sample_value("cachegate_bypasses_total", {"reason": reason})

    assert (counted("invalid_value"), counted("empty_value")) == (6, 2)
    assert counted("body_not_object") == 3


async def test_absent_subjects_share_a_key_but_empty_and_non_objects_never_do(
    l1_store: Store, namespace: str
) -> None:
    seen: list[Any] = []

    async def read(request: Request) -> dict[str, Any]:
        seen.append(await request.json())
        return {"n": len(seen)}

    policy = Policy(
        "/ask", tenant=trusted_header("x-ws"), subject=body_field("c"), key={"q": body_field("q")}
    )
    gate = gate_for(l1_store, namespace, policy)
    async with client_for(CacheGateMiddleware(echo_app(read), gate)) as client:
        headers = {"x-ws": "w"}
        assert (await client.post("/ask", json={"q": "x"}, headers=headers)).headers[
            "x-cachegate"
        ] == "miss"
        null = await client.post("/ask", json={"q": "x", "c": None}, headers=headers)
        empty = await client.post("/ask", json={"q": "x", "c": ""}, headers=headers)
        listed = await client.post("/ask", json=[{"q": "x"}], headers=headers)
    assert null.headers["x-cachegate"] == "hit"
    assert (empty.headers["x-cachegate"], listed.headers["x-cachegate"]) == ("bypass", "bypass")
    await gate.aclose()


async def test_an_int_coercion_matches_a_fastapi_int_field(l1_store: Store, namespace: str) -> None:
    app, _computed = fastapi_app()
    gate = authenticated_gate(l1_store, namespace)
    app.add_middleware(CacheGateMiddleware, gate=gate)
    app.add_middleware(AuthenticationMiddleware, backend=TokenBackend())
    alice = {"authorization": "Bearer token-alice"}
    async with client_for(app) as client:
        first = await client.post("/ai/query", json={"query": "q", "client_id": 1}, headers=alice)
        same = await client.post("/ai/query", json={"query": "q", "client_id": "01"}, headers=alice)
        other = await client.post("/ai/query", json={"query": "q", "client_id": 2}, headers=alice)
        odd = await client.post("/ai/query", json={"query": "q", "client_id": "1.0"}, headers=alice)
    assert first.headers["x-cachegate"] == "miss"
    assert same.headers["x-cachegate"] == "hit"
    assert same.json() == first.json()
    assert other.headers["x-cachegate"] == "miss"
    assert odd.headers["x-cachegate"] == "bypass"
    await gate.aclose()


# --- 4. path parameters are key material by default -------------------------------------------


async def test_path_parameters_are_keyed_without_being_named(
    l1_store: Store, namespace: str
) -> None:
    async def read(request: Request) -> dict[str, Any]:
        return {"summary of": request.path_params["cid"]}

    policy = Policy("/c/{cid}/s", tenant=trusted_header("x-ws"), methods=frozenset({"GET"}))
    gate = gate_for(l1_store, namespace, policy)
    async with client_for(CacheGateMiddleware(echo_app(read), gate)) as client:
        a = [await client.get("/c/A/s", headers={"x-ws": "w"}) for _ in range(2)]
        b = await client.get("/c/B/s", headers={"x-ws": "w"})
    assert [r.headers["x-cachegate"] for r in (*a, b)] == ["miss", "hit", "miss"]
    assert b.json() == {"summary of": "B"}
    await gate.aclose()


# --- 5. keyed digests ----------------------------------------------------------------------------

SECRET = b"a key secret of 32 bytes, really"


async def test_with_a_secret_no_store_key_can_be_confirmed_by_guessing(
    redis_url: str, namespace: str
) -> None:
    store = RedisStore.from_url(redis_url, deadline=1.0)
    policy = Policy(
        "/ask", tenant=trusted_header("x-ws"), subject=body_field("c"), key={"q": body_field("q")}
    )

    async def read(request: Request) -> dict[str, Any]:
        return {"ok": True}

    gate = gate_for(store, namespace, policy, key_secret=SECRET)
    try:
        async with client_for(CacheGateMiddleware(echo_app(read), gate)) as client:
            await client.post("/ask", json={"q": "x", "c": "client-7"}, headers={"x-ws": "ws-42"})
        stored = [key.decode() async for key in store.client.scan_iter(match=f"{namespace}:*")]
        plain = KeySpace(namespace)
        keyed = KeySpace(namespace, SECRET)
        assert stored
        assert all(plain.tenant_tag("ws-42") not in key for key in stored)
        assert all(keyed.tenant_tag("ws-42") in key for key in stored)
        assert set(plain.generation_keys(CacheScope("ws-42", "client-7"))).isdisjoint(stored)
    finally:
        await gate.aclose()
        delete_namespace(redis_url, namespace)


def test_an_encrypted_store_always_keys_its_digests() -> None:
    from cachegate.store.encrypted import EncryptedStore

    with pytest.raises(ValueError, match="digest_secret"):
        EncryptedStore(MemoryStore(), {"k": b"k" * 32}, "k")
    store = EncryptedStore(
        MemoryStore(), {"k": b"k" * 32}, "k", digest_secret=SECRET, metrics=fresh_metrics()
    )
    gate = CacheGate(policies=[], store=store)
    assert gate.keyspace.secret == SECRET
    with pytest.raises(ValueError, match="differs"):
        CacheGate(policies=[], store=store, key_secret=b"another secret, 32 bytes long!!")
    with pytest.raises(ValueError, match="16 bytes"):
        KeySpace("ns", b"short")


# --- 6. the app's exceptions stay off CacheGate's spans ----------------------------------------


async def test_an_app_exception_is_recorded_on_our_span_by_its_type_only(namespace: str) -> None:
    patient = "patient-4711-Jane-Doe"

    async def read(request: Request) -> dict[str, Any]:
        Question.model_validate({"query": None, "client_id": patient})
        return {}

    exporter = recording_spans()
    policy = Policy("/ask", tenant=trusted_header("x-ws"), key={"q": body_field("q")})
    gate = gate_for(MemoryStore(), namespace, policy)
    app = CacheGateMiddleware(echo_app(read), gate)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        response = await client.post("/ask", json={"q": patient}, headers={"x-ws": "w"})
    assert response.status_code == 500
    fresh: list[ReadableSpan] = [
        span for span in exporter.get_finished_spans() if span.name == "cachegate.fresh"
    ]
    assert len(fresh) == 1
    span = fresh[0]
    assert span.attributes is not None
    assert span.attributes["error.type"] == "ValidationError"
    assert span.status.description is None
    assert not span.events
    everything = json.dumps(
        [
            {
                "attributes": dict(s.attributes or {}),
                "status": s.status.description,
                "events": [dict(e.attributes or {}) for e in s.events],
            }
            for s in exporter.get_finished_spans()
        ]
    )
    assert patient not in everything
    await gate.aclose()


# --- 8. do-not-store signals -----------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"cache-control": "max-age=0"},
        {"cache-control": "public, s-maxage=0"},
        {"cache-control": "max-age=abc"},
        {"pragma": "no-cache"},
        {"expires": "Thu, 01 Jan 1970 00:00:00 GMT"},
        {"expires": "0"},
        {"set-cookie2": "session=1"},
    ],
    ids=lambda headers: next(iter(headers.items()))[0] + "=" + next(iter(headers.values())),
)
async def test_a_response_that_says_do_not_store_is_not_stored(
    l1_store: Store, namespace: str, headers: dict[str, str]
) -> None:
    async def ask(request: Request) -> Response:
        return JSONResponse({"fresh": True}, headers=headers)

    policy = Policy("/ask", tenant=trusted_header("x-ws"))
    gate = gate_for(l1_store, namespace, policy)
    app = Starlette(routes=[Route("/ask", ask, methods=["POST"])])
    async with client_for(CacheGateMiddleware(app, gate)) as client:
        outcomes = [
            (await client.post("/ask", headers={"x-ws": "w"})).headers["x-cachegate"]
            for _ in range(2)
        ]
    assert outcomes == ["miss", "miss"]
    await gate.aclose()


async def test_a_response_with_a_future_expiry_or_positive_max_age_is_stored(
    l1_store: Store, namespace: str
) -> None:
    async def ask(request: Request) -> Response:
        return JSONResponse(
            {"fresh": True},
            headers={"cache-control": "max-age=60", "expires": "Thu, 01 Jan 1970 00:00:00 GMT"},
        )

    gate = gate_for(l1_store, namespace, Policy("/ask", tenant=trusted_header("x-ws")))
    app = Starlette(routes=[Route("/ask", ask, methods=["POST"])])
    async with client_for(CacheGateMiddleware(app, gate)) as client:
        outcomes = [
            (await client.post("/ask", headers={"x-ws": "w"})).headers["x-cachegate"]
            for _ in range(2)
        ]
    assert outcomes == ["miss", "hit"]
    await gate.aclose()


# --- 7. L2 follows the rollout wherever it is called; 9. misses equal hits ----------------------


@pytest.fixture(scope="module")
def full_precision_cohere() -> Any:
    from support.cohere_server import CohereServer

    with CohereServer(default_dimension=16, float64=True) as server:
        yield server


def l2_rollout(stage: str, *, kill: bool = False) -> Any:
    from cachegate.flags import FLAG_KILL_SWITCH, FlagRollout, OfflineFlags, stage_path

    payload = json.loads(stage_path(stage).read_text(encoding="utf-8"))
    for feature in payload["features"]:
        if feature["name"] == FLAG_KILL_SWITCH:
            feature["enabled"] = kill
    return FlagRollout(OfflineFlags(json.dumps(payload)))


@pytest.mark.parametrize(
    ("stage", "kill", "cached"),
    [
        ("l1-100", False, True),
        ("l1-100", True, False),
        ("dark-launch", False, False),
        ("off", False, False),
    ],
)
async def test_the_embedder_follows_the_rollout_outside_a_cached_request(
    l1_store: Store,
    namespace: str,
    full_precision_cohere: Any,
    stage: str,
    kill: bool,
    cached: bool,
) -> None:
    import cohere

    from cachegate.embeddings import CachedEmbedder

    server = full_precision_cohere
    server.reset()
    embedder = CachedEmbedder(
        cohere.AsyncClientV2(api_key="test", base_url=server.url, max_retries=0),
        l1_store,
        namespace=namespace,
        rollout=l2_rollout(stage, kill=kill),
    )
    options = {"model": "embed-english-v3.0", "input_type": "search_query", "tenant": "w1"}
    for _ in range(2):  # a background job: no CacheGate request around it
        await embedder.embed(texts=["how did the client sleep?"], **options)
    assert len(server.ok_calls) == (1 if cached else 2)
    assert embedder.stats.hits == (1 if cached else 0)


async def test_a_miss_returns_the_numbers_every_later_hit_returns(
    l1_store: Store, namespace: str, full_precision_cohere: Any
) -> None:
    import cohere

    from cachegate.embeddings import CachedEmbedder

    server = full_precision_cohere
    server.reset()
    client = cohere.AsyncClientV2(api_key="test", base_url=server.url, max_retries=0)
    raw = await client.embed(
        texts=["sleep"], model="m", input_type="search_query", embedding_types=["float"]
    )
    for storage in ("float32", "float16"):
        embedder = CachedEmbedder(client, l1_store, namespace=namespace, storage=storage)
        texts = ["sleep", "appetite", "sleep"]
        options = {"model": "m", "input_type": "search_query", "tenant": "w-" + storage}
        miss = await embedder.embed(texts=texts, embedding_types=["float"], **options)
        hit = await embedder.embed(texts=texts, embedding_types=["float"], **options)
        assert embedder.stats.hits == 2
        assert miss.embeddings.float_ == hit.embeddings.float_
    assert raw.embeddings.float_ is not None
    assert raw.embeddings.float_[0] != miss.embeddings.float_[0]  # Cohere's float64 values


# --- properties ----------------------------------------------------------------------------------


names = st.sampled_from(["ws", "q", "c", "x y", "é"])
values = st.text(min_size=0, max_size=6)


def view(**options: Any) -> RequestView:
    base: dict[str, Any] = {
        "method": "POST",
        "path": "/ask",
        "path_params": {},
        "headers": [],
        "query_string": b"",
        "body": b"",
    }
    return RequestView(**{**base, **options})


@given(st.lists(st.tuples(names, values), max_size=6), names)
def test_a_query_value_is_the_apps_value_or_a_bypass(
    pairs: list[tuple[str, str]], name: str
) -> None:
    from urllib.parse import urlencode

    query = urlencode(pairs).encode("latin-1", "ignore") if pairs else b""
    app_view = QueryParams(query.decode("latin-1"))
    occurrences = len(app_view.getlist(name))
    extractor = query_param(name)
    if occurrences > 1:
        with pytest.raises(BadRequest) as raised:
            extractor(view(query_string=query))
        assert raised.value.reason == "ambiguous_value"
    else:
        assert extractor(view(query_string=query)) == app_view.get(name)


raw_queries = st.text(alphabet="q=&+%2A0fFzé;x ", max_size=24)


@given(raw_queries, st.sampled_from(["q", "q ", "x", "*", "qé", ""]))
def test_a_raw_query_string_is_read_as_the_app_reads_it(query: str, name: str) -> None:
    """Any query string, malformed escapes, `+`, empty pairs and names included: every
    parameter is the app's value or a bypass, read from one parse shared by the extractors."""
    app_view = QueryParams(query)
    request = view(query_string=query.encode("latin-1", "ignore"))
    for _ in range(2):  # the second read is from the parse the first one made
        expected = app_view.getlist(name)
        if len(expected) > 1:
            with pytest.raises(BadRequest) as raised:
                query_param(name)(request)
            assert raised.value.reason == "ambiguous_value"
        else:
            assert query_param(name)(request) == (expected[0] if expected else None)


header_names = st.sampled_from([b"x-tenant", b"X-Tenant", b"X-TENANT", b"x-other"])


@given(st.lists(st.tuples(header_names, st.sampled_from([b"a", b"b"])), max_size=4))
def test_a_header_value_is_the_apps_value_or_a_bypass(raw: list[tuple[bytes, bytes]]) -> None:
    """Raw header names as a server might send them: the cache reads the header Starlette's
    `Headers` gives the app (lowercased names only) or bypasses; it never sees one the app
    does not."""
    app_values = Request({"type": "http", "headers": raw}).headers.getlist("X-Tenant")
    extractor = trusted_header("X-Tenant")
    if len(app_values) > 1:
        with pytest.raises(BadRequest) as raised:
            extractor(view(headers=raw))
        assert raised.value.reason == "ambiguous_value"
    else:
        assert extractor(view(headers=raw)) == (app_values[0] if app_values else None)


@pytest.mark.parametrize("make", [trusted_header, header])
def test_a_header_name_no_server_can_send_is_refused_when_the_policy_is_built(
    make: Callable[[str], object],
) -> None:
    """A header name is Latin-1 on the wire: one that is not could never match, so it is a
    configuration error, not a bypass on every request."""
    with pytest.raises(ValueError, match="Latin-1"):
        make("X-Tenant-\u2603")


def containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=4), containers, max_leaves=8
)


@given(json_values, st.sampled_from(["c", "a.c"]))
def test_a_body_field_never_reads_a_non_object_like_a_missing_field(body: Any, path: str) -> None:
    request = view(body=json.dumps(body).encode(), headers=[(b"content-type", b"application/json")])
    try:
        value = body_field(path)(request)
    except BadRequest as error:
        assert error.reason == "body_not_object"
        return
    assert isinstance(body, dict)
    if value is None:
        parent = body.get("a") if path == "a.c" else body
        assert parent is None or parent.get("c") is None


ids = st.text(min_size=1, max_size=8)


@given(ids, ids, ids)
def test_distinct_path_parameters_never_share_an_entry(tenant: str, a: str, b: str) -> None:
    def key(space: KeySpace, value: str) -> str:
        return space.entry_key(
            CacheScope(tenant),
            route="/c/{cid}",
            method="GET",
            material={},
            path_params={"cid": value},
        )

    keyed, plain = KeySpace("ns", SECRET), KeySpace("ns")
    assert (key(keyed, a) == key(keyed, b)) == (a == b)
    assert plain.tenant_tag(tenant) not in key(keyed, a)
    assert key(keyed, a) != key(plain, a)
