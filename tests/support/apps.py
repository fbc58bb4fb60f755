"""The service the middleware tests cache: a Starlette or FastAPI app with an expensive query
route, routes that produce every kind of uncacheable response, and session writes.

`Harness` mounts `CacheGateMiddleware` on it with an httpx client, counting into a fresh metrics
registry (or into the metrics its store was built with).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import httpx
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from cachegate import (
    CacheGate,
    CacheGateMiddleware,
    Policy,
    WriteRule,
    body_field,
    path_param,
    trusted_header,
)
from cachegate.demo.app import write_rules
from cachegate.store import MemoryStore, Store
from support.stores import metrics_for

TENANT_HEADER = "X-Tenant"
FRAMEWORKS = ("starlette", "fastapi")


def query_policy(**options: Any) -> Policy:
    """The cached AI route: scope (tenant header, client_id) and key material (query)."""
    return Policy(
        "/ai/query",
        tenant=trusted_header(TENANT_HEADER),
        subject=body_field("client_id"),
        key={"query": body_field("query")},
        **options,
    )


def refusal_policy(**options: Any) -> Policy:
    """`/r/{kind}`: one kind of response per path, keyed on the kind."""
    return Policy(
        "/r/{kind}",
        tenant=trusted_header(TENANT_HEADER),
        key={"kind": path_param("kind")},
        **options,
    )


def session_rules() -> list[WriteRule]:
    """The demo's session write rules, with this module's tenant header."""
    return write_rules(tenant=trusted_header(TENANT_HEADER))


class Service:
    """The app's state: calls per route, the session notes answers are computed from, and
    gates (`hold`) that keep a request inside the app until the test lets it go."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.version = 1
        self.stamp = False
        """Put the computation's number in each answer, so every computation is told apart."""
        self.delay = 0.0
        self.notes: dict[tuple[str, str | None], list[str]] = {}
        self.sessions: dict[str, tuple[str, str, str]] = {}
        self.bodies: list[bytes] = []
        self.request_headers: list[list[tuple[bytes, bytes]]] = []
        self.entered: dict[str, asyncio.Event] = {}
        self.released: dict[str, asyncio.Event] = {}
        self.response_headers: dict[str, str] = {}
        self.failures = 0
        self.terse_writes = False
        """Answer `POST /sessions` with `{"ok": true}`, as the README's quickstart app does."""
        """The next `failures` queries raise, as a crashing model client would."""

    def hold(self, name: str) -> tuple[asyncio.Event, asyncio.Event]:
        """Requests with `X-Hold: name` stop in the app until released; (entered, release)."""
        self.entered[name] = asyncio.Event()
        self.released[name] = asyncio.Event()
        return self.entered[name], self.released[name]

    async def _held(self, request: Request) -> None:
        name = request.headers.get("x-hold")
        if name is not None:
            self.entered[name].set()
            await self.released[name].wait()

    def _notes(self, tenant: str, client: str | None) -> list[str]:
        if client is None:
            return [n for (t, _), notes in self.notes.items() if t == tenant for n in notes]
        return list(self.notes.get((tenant, client), []))

    # ---- routes ----------------------------------------------------------------------------

    async def query(self, request: Request) -> Response:
        self.calls["query"] += 1
        number = self.calls["query"]
        body = await request.body()
        self.bodies.append(body)
        self.request_headers.append(list(request.scope["headers"]))
        try:
            payload = json.loads(body)
        except ValueError:
            return JSONResponse({"error": "body must be JSON"}, status_code=400)
        tenant = request.headers.get(TENANT_HEADER)
        if not tenant:
            return JSONResponse({"error": "who are you?"}, status_code=401)
        if not isinstance(payload, dict):
            return JSONResponse({"error": "body must be an object"}, status_code=422)
        client = payload.get("client_id")
        client = client if isinstance(client, str) else None
        notes = self._notes(tenant, client)  # read when the computation starts
        version = self.version
        await self._held(request)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.failures:
            self.failures -= 1
            raise RuntimeError("model down")
        query = payload.get("query")
        answer: dict[str, Any] = {
            "tenant": tenant,
            "client": client,
            "query": "NaN" if query != query else query,
            "notes": notes,
            "version": version,
        }
        if self.stamp:
            answer["computation"] = number
        return JSONResponse(answer, headers=self.response_headers)

    async def refusal(self, request: Request) -> Response:
        kind = request.path_params["kind"]
        self.calls[kind] += 1
        await request.body()
        n = self.calls[kind]
        text = f"{kind} #{n}"
        if kind == "ok":
            return PlainTextResponse(
                text, headers={"x-custom": "kept", "cache-control": "max-age=9"}
            )
        if kind in {"created", "notfound", "error", "redirect"}:
            status = {"created": 201, "notfound": 404, "error": 500, "redirect": 302}[kind]
            return PlainTextResponse(text, status_code=status)
        if kind == "cookie":
            response = PlainTextResponse(text)
            response.set_cookie("session", "abc")
            return response
        if kind == "nocache":
            return PlainTextResponse(text, headers={"cache-control": "no-cache, no-store"})
        if kind == "nostore":
            return PlainTextResponse(text, headers={"cache-control": "max-age=60, No-Store"})
        if kind == "private":
            return PlainTextResponse(text, headers={"cache-control": "private, max-age=60"})
        if kind == "private2":  # two Cache-Control headers, the second one refuses
            response = PlainTextResponse(text, headers={"cache-control": "max-age=60"})
            response.raw_headers.append((b"cache-control", b"private"))
            return response
        if kind == "vary":
            return PlainTextResponse(text, headers={"vary": "Accept-Language"})
        if kind == "stream":

            async def chunks() -> AsyncIterator[bytes]:
                yield f"{kind} #{n} part 1;".encode()
                yield b"part 2"

            return StreamingResponse(chunks(), media_type="text/plain")
        if kind == "sse":  # one single body message, but an event stream
            return PlainTextResponse(f"data: {text}\n\n", media_type="text/event-stream")
        if kind == "big":
            return PlainTextResponse(text + "x" * 5000)
        return PlainTextResponse("unknown kind", status_code=400)

    async def create_session(self, request: Request) -> Response:
        self.calls["create_session"] += 1
        tenant = request.headers.get(TENANT_HEADER) or ""
        try:
            payload = json.loads(await request.body())
        except ValueError:
            return JSONResponse({"error": "body must be JSON"}, status_code=400)
        status = int(request.query_params.get("status", "201"))
        client, notes = payload.get("client_id"), payload.get("notes", "")
        if status >= 400:
            return JSONResponse({"error": "refused"}, status_code=status)
        if not isinstance(notes, str):
            return JSONResponse({"error": "notes must be a string"}, status_code=422)
        session_id = f"s{len(self.sessions) + 1}"
        self.sessions[session_id] = (tenant, client, notes)
        self.notes.setdefault((tenant, client), []).append(notes)
        if self.terse_writes:
            return JSONResponse({"ok": True}, status_code=status)
        return JSONResponse({"session_id": session_id, "client_id": client}, status_code=status)

    async def change_session(self, request: Request) -> Response:
        self.calls["change_session"] += 1
        tenant = request.headers.get(TENANT_HEADER) or ""
        session_id = request.path_params["session_id"]
        found = self.sessions.get(session_id)
        if found is None or found[0] != tenant:
            return JSONResponse({"error": "no such session"}, status_code=404)
        _, client, old = found
        notes = self.notes.setdefault((tenant, client), [])
        notes.remove(old)
        if request.method == "DELETE":
            del self.sessions[session_id]
        else:
            new = json.loads(await request.body())["notes"]
            self.sessions[session_id] = (tenant, client, new)
            notes.append(new)
        return JSONResponse({"session_id": session_id, "client_id": client})

    async def plain(self, request: Request) -> Response:
        self.calls["plain"] += 1
        return PlainTextResponse(f"plain {(await request.body()).decode()}")

    # ---- apps ------------------------------------------------------------------------------

    def _routes(self) -> list[tuple[str, Any, list[str]]]:
        return [
            ("/ai/query", self.query, ["POST"]),
            ("/r/{kind}", self.refusal, ["POST"]),
            ("/sessions", self.create_session, ["POST"]),
            ("/sessions/{session_id}", self.change_session, ["PUT", "PATCH", "DELETE"]),
            ("/plain", self.plain, ["POST", "GET"]),
        ]

    def app(self, framework: str, gate: CacheGate) -> Starlette:
        """The service on `framework`, with `CacheGateMiddleware` mounted the usual way."""
        if framework == "starlette":
            app = Starlette(routes=[Route(p, e, methods=m) for p, e, m in self._routes()])
        elif framework == "fastapi":
            app = FastAPI()
            for path, endpoint, methods in self._routes():
                app.add_api_route(path, endpoint, methods=methods)
        else:
            raise ValueError(framework)
        app.add_middleware(CacheGateMiddleware, gate=gate)
        return app


class Harness:
    """One gate (fresh metrics registry), the service behind it, and a client."""

    def __init__(
        self,
        *,
        store: Store | None = None,
        namespace: str = "cgtest",
        framework: str = "starlette",
        policies: Iterable[Policy] | None = None,
        write_rules: Iterable[WriteRule] | None = None,
        service: Service | None = None,
        **gate_options: Any,
    ) -> None:
        self.service = service if service is not None else Service()
        self.store = store if store is not None else MemoryStore()
        self.metrics = metrics_for(self.store)
        assert self.metrics.registry is not None
        self.registry = self.metrics.registry
        self.gate = CacheGate(
            policies=list(policies) if policies is not None else [query_policy(), refusal_policy()],
            write_rules=list(write_rules) if write_rules is not None else session_rules(),
            store=self.store,
            namespace=namespace,
            metrics=self.metrics,
            **gate_options,
        )
        self.app = self.service.app(framework, self.gate)
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://testserver"
        )

    async def __aenter__(self) -> Harness:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.gate.drain()
        await self.gate.invalidator.aclose()

    async def ask(
        self,
        query: object = "what did the client say about sleep?",
        *,
        tenant: str | None = "t1",
        client: object = "c1",
        headers: dict[str, str] | None = None,
        **body: object,
    ) -> httpx.Response:
        payload: dict[str, object] = {"query": query, **body}
        if client is not None:
            payload["client_id"] = client
        sent = dict(headers or {})
        if tenant is not None:
            sent[TENANT_HEADER] = tenant
        return await self.client.post("/ai/query", json=payload, headers=sent)

    async def write(
        self, client: str | None = "c1", *, tenant: str = "t1", notes: str = "n", status: int = 201
    ) -> httpx.Response:
        payload: dict[str, object] = {"notes": notes}
        if client is not None:
            payload["client_id"] = client
        params = {} if status == 201 else {"status": str(status)}
        return await self.client.post(
            "/sessions", json=payload, headers={TENANT_HEADER: tenant}, params=params
        )

    def sample(self, name: str, **labels: str) -> float:
        """A metric's value; 0 for a labelled series never created."""
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def bypassed(self, reason: str) -> float:
        return self.sample("cachegate_bypasses_total", reason=reason)

    def uncacheable(self, reason: str) -> float:
        return self.sample("cachegate_uncacheable_responses_total", reason=reason)

    @property
    def hits(self) -> float:
        return self.sample("cachegate_cache_hits_total", cache_layer="query_result")

    @property
    def misses(self) -> float:
        return self.sample("cachegate_cache_misses_total", cache_layer="query_result")

    def bypass_counts(self) -> dict[str, float]:
        """Every bypass reason with a non-zero count."""
        counts: dict[str, float] = {}
        for metric in self.registry.collect():
            if metric.name == "cachegate_bypasses":
                for s in metric.samples:
                    if s.name.endswith("_total") and s.value:
                        counts[s.labels["reason"]] = s.value
        return counts


def cachegate(response: httpx.Response) -> str | None:
    return response.headers.get("x-cachegate")


def header_pairs(response: httpx.Response) -> Sequence[tuple[str, str]]:
    return [(k.lower(), v) for k, v in response.headers.multi_items()]
