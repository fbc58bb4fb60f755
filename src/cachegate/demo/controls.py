"""Demo-only controls for `cachegate replay`: `/_demo/stage` (read or switch the flag stage) and
`/_demo/drain` (wait until background cache work is done), answered to loopback clients only."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cachegate.demo.routes import json_object
from cachegate.demo.stages import StageControl, StageSwitchRefused
from cachegate.flags import UnknownStageError
from cachegate.gate import CacheGate

DRAIN_TIMEOUT = 30.0
_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost", "testclient"})


class Controls:
    """The stage switch (when the app has `stages`) and the drain of `gate`."""

    def __init__(self, gate: CacheGate, stages: StageControl | None) -> None:
        self.gate = gate
        self.stages = stages

    async def stage(self, request: Request) -> Response:
        """`GET|POST /_demo/stage`: the stage in use; POST `{"stage": NAME}` switches first."""
        if not _loopback(request):
            return JSONResponse({"error": "demo controls answer loopback clients only"}, 403)
        stages = self.stages
        if stages is None:
            return JSONResponse({"error": "this app has no stage control"}, status_code=404)
        if request.method == "POST":
            payload = await json_object(request)
            name = None if payload is None else payload.get("stage")
            if not isinstance(name, str):
                return JSONResponse({"error": 'body must be {"stage": NAME}'}, status_code=422)
            try:
                stages.switch(name)
            except UnknownStageError as error:
                body = {"error": str(error), "stages": stages.stages()}
                return JSONResponse(body, status_code=422)
            except StageSwitchRefused as error:
                return JSONResponse({"error": str(error)}, status_code=409)
        return JSONResponse(await asyncio.to_thread(stages.report))

    async def drain(self, request: Request) -> Response:
        """`POST /_demo/drain`: wait (at most `DRAIN_TIMEOUT`) for the gate's background work."""
        if not _loopback(request):
            return JSONResponse({"error": "demo controls answer loopback clients only"}, 403)
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT):
                await self.gate.drain()
        except TimeoutError:
            return JSONResponse({"drained": False}, status_code=504)
        return JSONResponse({"drained": True})


def _loopback(request: Request) -> bool:
    client = request.client
    return client is not None and (client.host in _LOOPBACK or client.host.startswith("127."))
