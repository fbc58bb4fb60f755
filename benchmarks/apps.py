"""The ASGI apps measured side by side, built the same way in-process and under uvicorn.

One endpoint, `/ai/query`: a POST with `{"query", "client_id"}` and the tenant in
`X-Workspace-ID` (the product's use), or a GET with `q` and `client_id` query parameters (what
fastapi-cache2 can cache: it only caches GET). The endpoint answers the same ~1 KiB JSON every
time, so a hit, a floor read and a fresh answer all carry the same bytes.

Under uvicorn an app is chosen by `BENCH_APP` (see `APPS`), with `BENCH_REDIS_URL` and
`BENCH_NAMESPACE`: `uvicorn --factory benchmarks.apps:from_env`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Annotated, Any

from fastapi import FastAPI, Header
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cachegate import (
    CacheGate,
    CacheGateMiddleware,
    Decision,
    MemoryStore,
    Policy,
    RedisStore,
    StaticRollout,
    body_field,
    query_param,
    trusted_header,
)
from cachegate.extractors import Extractor
from cachegate.middleware import STATE_KEY
from cachegate.responses import HEADER
from cachegate.rollout import Rollout, enter_decision, exit_decision
from cachegate.store import Store
from cachegate.vocabulary import BypassReason, CachePath

Message = MutableMapping[str, Any]
CacheScope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[CacheScope, Receive, Send], Awaitable[None]]

ROUTE = "/ai/query"
TENANT = "ws-bench-1"
CLIENT = "client-17"
QUERY = "What did the client report about sleep and anxiety since the last session?"
ANSWER: dict[str, Any] = {
    "answer": (
        "Across the last three sessions the client reported improved sleep onset after "
        "starting the wind-down routine, fewer night-time awakenings, and lower anxiety "
        "before work meetings; rumination on weekends remains the main difficulty. "
    )
    * 3,
    "sources": [{"session_id": f"s-{i}", "score": round(0.9 - i * 0.05, 2)} for i in range(5)],
    "model": "simulated",
}
ANSWER_BYTES = json.dumps(ANSWER, separators=(",", ":")).encode()
POST_BODY = json.dumps({"query": QUERY, "client_id": CLIENT}).encode()
GET_QUERY = f"q={QUERY.replace(' ', '+').replace('?', '%3F')}&client_id={CLIENT}".encode()


def floor_key(namespace: str) -> str:
    return f"{namespace}:floor"


# --- endpoints -----------------------------------------------------------------------------------


async def answer_post(request: Request) -> Response:
    """The endpoint's fresh path: read the JSON body, answer (the expensive part is elided)."""
    body = await request.json()
    if not isinstance(body, dict) or "query" not in body:
        return JSONResponse({"error": "query required"}, status_code=422)
    return JSONResponse(ANSWER)


def starlette_app() -> Starlette:
    """The bare Starlette app: POST /ai/query."""
    return Starlette(routes=[Route(ROUTE, answer_post, methods=["POST"])])


def _policy(field: Callable[[str], Extractor], query: str, method: str) -> Policy:
    """The route's policy, the client id and the question read by `field` (body or query)."""
    return Policy(
        ROUTE,
        tenant=trusted_header("X-Workspace-ID"),
        subject=field("client_id"),
        key={query: field(query)},
        methods=frozenset({method}),
        ttl=3600,
    )


def post_policy() -> Policy:
    return _policy(body_field, "query", "POST")


def get_policy() -> Policy:
    return _policy(query_param, "q", "GET")


def redis_store(redis_url: str) -> RedisStore:
    # The deadline is raised from 50 ms so that a loaded 2-core machine never turns a hit
    # into a bypass mid-run; it bounds the call, it does not slow it.
    return RedisStore.from_url(redis_url, deadline=1.0)


class BodyRead:
    """The least any body-keyed cache must do: read the whole body, then replay it to the app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: CacheScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request" or not message.get("more_body", False):
                break

        async def replay() -> Message:
            if messages:
                return messages.pop(0)
            return await receive()

        await self.app(scope, replay, send)


class LeastBypass:
    """The least a flags-off bypass of a cached route can do, inlined in one pure-ASGI
    middleware: find the route, read the tenant, decide, count the decision, the bypass and the
    duration, carry the decision (`request.state` and the context the L2 embedder reads), mark
    the response. What `CacheGateMiddleware` does for such a request, with nothing between the
    steps: the floor of the flags-off row."""

    def __init__(self, app: ASGIApp, gate: CacheGate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: CacheScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                receive = self.gate.lifespan(receive)
            await self.app(scope, receive, send)
            return
        match = self.gate.router.match(scope["method"], scope["path"])
        if match is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        counts = self.gate.counts(match.rule.route)
        tenant = None
        for name, value in scope["headers"]:
            if name == b"x-workspace-id":
                tenant = value.decode("latin-1")
        assert tenant is not None
        decision = self.gate.rollout.decide(tenant)
        counts.decided(decision.l1, decision.l2)
        counts.bypass(BypassReason.MODE_OFF)
        scope.setdefault("state", {})[STATE_KEY] = decision
        tokens = enter_decision(decision, tenant)

        def marked(message: Message) -> Awaitable[None]:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (HEADER, b"bypass")]
            return send(message)

        try:
            await self.app(scope, receive, marked)
        finally:
            exit_decision(tokens)
            counts.finished(CachePath.BYPASS, time.perf_counter() - started)


# --- the variants --------------------------------------------------------------------------------


class Built:
    """An app and what to close after it."""

    def __init__(self, app: ASGIApp, gate: CacheGate | None = None, client: Any = None) -> None:
        self.app = app
        self.gate = gate
        self.client = client

    async def aclose(self) -> None:
        if self.gate is not None:
            await self.gate.aclose()
        if self.client is not None:
            await self.client.aclose()


def bare(redis_url: str, namespace: str) -> Built:
    return Built(starlette_app())


def body_read(redis_url: str, namespace: str) -> Built:
    app = starlette_app()
    app.add_middleware(BodyRead)
    return Built(app)


def gated(policy: Policy, store: Store, namespace: str, rollout: Rollout | None = None) -> Built:
    """The bare app behind `CacheGateMiddleware` with one policy on `store`."""
    gate = CacheGate(policies=[policy], store=store, namespace=namespace, rollout=rollout)
    app = starlette_app()
    app.add_middleware(CacheGateMiddleware, gate=gate)
    return Built(app, gate)


def no_policy(redis_url: str, namespace: str) -> Built:
    other = Policy("/other", tenant=trusted_header("X-Workspace-ID"), key={"q": body_field("q")})
    return gated(other, MemoryStore(), namespace)


def flags_off(redis_url: str, namespace: str) -> Built:
    return gated(post_policy(), MemoryStore(), namespace, StaticRollout(Decision()))


def least_bypass(redis_url: str, namespace: str) -> Built:
    gate = CacheGate(
        policies=[post_policy()],
        store=MemoryStore(),
        namespace=namespace,
        rollout=StaticRollout(Decision()),
    )
    app = starlette_app()
    app.add_middleware(LeastBypass, gate=gate)
    return Built(app, gate)


def hit_memory(redis_url: str, namespace: str) -> Built:
    return gated(post_policy(), MemoryStore(), namespace)


def hit_redis(redis_url: str, namespace: str) -> Built:
    return gated(post_policy(), redis_store(redis_url), namespace)


def hit_memory_rollout(rollout: Rollout, namespace: str) -> Built:
    """The memory hit path with a given rollout (the flag-cost group)."""
    return gated(post_policy(), MemoryStore(), namespace, rollout)


def _floor_app(redis_url: str, namespace: str, method: str) -> Built:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(redis_url)
    key = floor_key(namespace)

    async def floor(request: Request) -> Response:
        if method == "POST":
            await request.body()
        value = await client.get(key)
        return Response(value, media_type="application/json")

    app = Starlette(routes=[Route(ROUTE, floor, methods=[method])])
    return Built(app, client=client)


def floor_post(redis_url: str, namespace: str) -> Built:
    """One raw `redis.asyncio` GET, the bytes returned: the least a Redis-backed hit can cost."""
    return _floor_app(redis_url, namespace, "POST")


def floor_get(redis_url: str, namespace: str) -> Built:
    return _floor_app(redis_url, namespace, "GET")


async def ask(q: str, client_id: str, x_workspace_id: Annotated[str, Header()]) -> dict[str, Any]:
    """The FastAPI GET endpoint's fresh path (the expensive part is elided)."""
    return ANSWER


def _fastapi_endpoint() -> tuple[FastAPI, Callable[..., Awaitable[dict[str, Any]]]]:
    return FastAPI(), ask


def fastapi_cachegate_get(redis_url: str, namespace: str) -> Built:
    """The FastAPI GET endpoint behind CacheGate on Redis (same endpoint as fastapi-cache2's)."""
    app, ask = _fastapi_endpoint()
    app.get(ROUTE)(ask)
    gate = CacheGate(policies=[get_policy()], store=redis_store(redis_url), namespace=namespace)
    app.add_middleware(CacheGateMiddleware, gate=gate)
    return Built(app, gate)


def fastapi_cache2_get(redis_url: str, namespace: str) -> Built:
    """The same FastAPI GET endpoint with fastapi-cache2's `@cache` on its Redis backend."""
    import redis.asyncio
    from fastapi_cache import FastAPICache
    from fastapi_cache.backends.redis import RedisBackend
    from fastapi_cache.decorator import cache

    client = redis.asyncio.Redis.from_url(redis_url)
    FastAPICache.init(RedisBackend(client), prefix=f"{namespace}-fc")
    app, ask = _fastapi_endpoint()
    app.get(ROUTE)(cache(expire=3600)(ask))
    return Built(app, client=client)


def fastapi_floor_get(redis_url: str, namespace: str) -> Built:
    """The one-GET floor as a FastAPI endpoint (what the framework alone adds to the floor)."""
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(redis_url)
    key = floor_key(namespace)
    app = FastAPI()

    @app.get(ROUTE)
    async def floor() -> Response:
        value = await client.get(key)
        return Response(value, media_type="application/json")

    return Built(app, client=client)


APPS: dict[str, Callable[[str, str], Built]] = {
    "bare": bare,
    "body_read": body_read,
    "no_policy": no_policy,
    "flags_off": flags_off,
    "least_bypass": least_bypass,
    "hit_memory": hit_memory,
    "hit_redis": hit_redis,
    "floor_post": floor_post,
    "floor_get": floor_get,
    "fastapi_floor_get": fastapi_floor_get,
    "fastapi_cachegate_get": fastapi_cachegate_get,
    "fastapi_cache2_get": fastapi_cache2_get,
}
GET_APPS = frozenset(
    {"floor_get", "fastapi_floor_get", "fastapi_cachegate_get", "fastapi_cache2_get"}
)


def from_env() -> ASGIApp:
    """The uvicorn factory: the app named by `BENCH_APP`."""
    name = os.environ["BENCH_APP"]
    built = APPS[name](os.environ["BENCH_REDIS_URL"], os.environ["BENCH_NAMESPACE"])
    return built.app
