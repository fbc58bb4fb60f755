"""The load generator: runs the workload against the target at each stage, counts what every
response says (`X-CacheGate`), and measures the stage from `/metrics` deltas."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

import httpx

from cachegate.demo.replay.config import (
    NO_HEADER,
    TENANT_HEADER,
    ReplayConfig,
    ReplayError,
    check_loopback,
)
from cachegate.demo.replay.figures import Samples, StageResult, measure
from cachegate.demo.replay.switching import DemoSwitcher, Switcher
from cachegate.demo.workload import (
    CreateSession,
    DeleteSession,
    Operation,
    Query,
    UpdateSession,
    Workload,
)


class Progress:
    """A progress line on a stream: redrawn in place on a terminal, one line per stage else."""

    def __init__(self, stream: TextIO | None, *, live: bool | None = None) -> None:
        self.stream = stream
        self.live = bool(stream is not None and (stream.isatty() if live is None else live))
        self._width = 0

    def update(self, text: str) -> None:
        """Redraw the line (terminals only)."""
        if self.stream is None or not self.live:
            return
        self.stream.write("\r" + text.ljust(self._width))
        self._width = len(text)
        self.stream.flush()

    def done(self, text: str) -> None:
        """Replace the line with a final one."""
        if self.stream is None:
            return
        prefix = "\r" if self.live else ""
        self.stream.write(prefix + text.ljust(self._width) + "\n")
        self._width = 0
        self.stream.flush()


@dataclass
class _Tally:
    issued: int = 0
    finished: int = 0
    writes: int = 0
    errors: int = 0
    observations: list[tuple[str, float]] = field(default_factory=list)


class Replay:
    """Runs `config` against `client` (based at the target URL), switching with `switcher`."""

    def __init__(
        self,
        config: ReplayConfig,
        client: httpx.AsyncClient,
        switcher: Switcher,
        *,
        progress: Progress | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.config = config
        self.client = client
        self.switcher = switcher
        self.progress = progress or Progress(None)
        self.clock = clock
        self.workload = Workload(config.catalog, config.mix, random.Random(config.seed))

    async def run(self) -> list[StageResult]:
        """Every stage in order; `ReplayError` if the target cannot be measured."""
        first = await self.scrape()
        if not first.has(f"{self.config.namespace}_cache_hits_total"):
            raise ReplayError(
                f"{self.config.url}/metrics has no {self.config.namespace}_cache_hits_total: "
                "is it a CacheGate service (or another --namespace)?"
            )
        results = []
        for number, stage in enumerate(self.config.stages, 1):
            results.append(await self.run_stage(stage, f"[{number}/{len(self.config.stages)}]"))
        return results

    async def scrape(self) -> Samples:
        """The target's `/metrics`."""
        try:
            response = await self.client.get("/metrics")
        except httpx.HTTPError as error:
            raise ReplayError(
                f"cannot reach {self.config.url}/metrics ({type(error).__name__}): "
                "is the service running (cachegate serve)?"
            ) from error
        if response.status_code != 200:
            raise ReplayError(f"{self.config.url}/metrics answered HTTP {response.status_code}")
        return Samples.parse(response.text)

    async def drain(self) -> None:
        """Let background comparisons finish before measuring (demo endpoint, else a pause)."""
        try:
            response = await self.client.post("/_demo/drain")
        except httpx.HTTPError:
            response = None
        if response is None or response.status_code != 200:
            await asyncio.sleep(0.5)

    async def run_stage(self, stage: str, label: str = "") -> StageResult:
        """Switch to `stage`, run its load, measure."""
        config = self.config
        await self.switcher.switch(stage)
        before = await self.scrape()
        tally = _Tally()
        started = self.clock()
        deadline = started + config.duration

        async def worker() -> None:
            while tally.issued < config.requests and self.clock() < deadline:
                tally.issued += 1
                await self.execute(self.workload.next(), tally)
                tally.finished += 1

        async def ticker() -> None:
            while True:
                self.progress.update(
                    f"{label} {stage}: {tally.finished}/{config.requests} requests, "
                    f"{self.clock() - started:.1f} s, {tally.errors} errors"
                )
                await asyncio.sleep(0.25)

        ticking = asyncio.create_task(ticker())
        try:
            await asyncio.gather(*(worker() for _ in range(config.concurrency)))
        finally:
            ticking.cancel()
        seconds = self.clock() - started
        await self.drain()
        after = await self.scrape()
        self.progress.done(
            f"{label} {stage}: {tally.finished} requests in {seconds:.1f} s, {tally.errors} errors"
        )
        return measure(
            stage,
            after - before,
            seconds=seconds,
            observations=tally.observations,
            writes=tally.writes,
            errors=tally.errors,
            namespace=config.namespace,
            query_cost=config.query_cost,
        )

    async def execute(self, operation: Operation, tally: _Tally) -> None:
        """Send one operation; count errors and record query latencies by path."""
        headers = {TENANT_HEADER: operation.workspace}
        started = self.clock()
        try:
            response = await self._send(operation, headers)
        except httpx.HTTPError:
            tally.errors += 1
            if isinstance(operation, Query):
                tally.observations.append(("error", self.clock() - started))
            return
        elapsed = self.clock() - started
        if isinstance(operation, Query):
            if response.status_code != 200:
                tally.errors += 1
                tally.observations.append(("error", elapsed))
                return
            path = response.headers.get("x-cachegate", NO_HEADER)
            tally.observations.append((path, elapsed))
            return
        tally.writes += 1
        if response.status_code not in (200, 201):
            tally.errors += 1
            return
        if isinstance(operation, CreateSession | UpdateSession):
            session_id = _session_id(response)
            if session_id is None:
                tally.errors += 1
            else:
                self.workload.track(operation.workspace, session_id)

    async def _send(self, operation: Operation, headers: dict[str, str]) -> httpx.Response:
        client = self.client
        if isinstance(operation, Query):
            body = {"query": operation.text, "client_id": operation.client}
            return await client.post("/ai/query", json=body, headers=headers)
        if isinstance(operation, CreateSession):
            body = {"client_id": operation.client, "notes": operation.notes}
            return await client.post("/sessions", json=body, headers=headers)
        if isinstance(operation, UpdateSession):
            path = f"/sessions/{operation.session_id}"
            return await client.put(path, json={"notes": operation.notes}, headers=headers)
        assert isinstance(operation, DeleteSession)
        return await client.delete(f"/sessions/{operation.session_id}", headers=headers)


def _session_id(response: httpx.Response) -> str | None:
    try:
        payload = response.json()
    except ValueError:
        return None
    value = payload.get("session_id") if isinstance(payload, dict) else None
    return value if isinstance(value, str) else None


async def replay(
    config: ReplayConfig,
    *,
    switcher: Callable[[httpx.AsyncClient], Switcher] = DemoSwitcher,
    progress: Progress | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> list[StageResult]:
    """Run a replay against `config.url` (loopback only) and return a result per stage."""
    async with client_for(config, transport) as client:
        return await Replay(config, client, switcher(client), progress=progress).run()


def client_for(
    config: ReplayConfig, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """An HTTP client based at `config.url` (loopback only), sized for its concurrency."""
    url = check_loopback(config.url)
    limits = httpx.Limits(max_connections=config.concurrency + 2)
    return httpx.AsyncClient(
        base_url=url, timeout=config.timeout, limits=limits, transport=transport
    )
