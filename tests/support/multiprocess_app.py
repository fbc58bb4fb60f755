"""An app for `uvicorn --workers N --factory`: one cached route on Redis, default metrics."""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cachegate import (
    CacheGate,
    CacheGateMiddleware,
    Policy,
    RedisStore,
    body_field,
    trusted_header,
)
from cachegate.metrics import exposition


def make_app() -> Starlette:
    """Built in each worker, from `REDIS_URL` and `CACHEGATE_TEST_NAMESPACE`."""
    gate = CacheGate(
        policies=[
            Policy("/ask", tenant=trusted_header("x-workspace-id"), key={"q": body_field("q")})
        ],
        store=RedisStore.from_url(os.environ["REDIS_URL"], deadline=1.0),
        namespace=os.environ["CACHEGATE_TEST_NAMESPACE"],
    )

    async def ask(request: Request) -> Response:
        return JSONResponse({"answer": (await request.json())["q"], "pid": os.getpid()})

    async def pid(request: Request) -> Response:
        return JSONResponse({"pid": os.getpid()})

    async def metrics(request: Request) -> Response:
        return Response(exposition(), media_type="text/plain; version=0.0.4")

    app = Starlette(
        routes=[
            Route("/ask", ask, methods=["POST"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/pid", pid, methods=["GET"]),
        ]
    )
    app.add_middleware(CacheGateMiddleware, gate=gate)
    return app
