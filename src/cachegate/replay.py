"""`cachegate replay`: a realistic workload through the rollout stages, measured.

For each stage the flags are moved (the demo's `/_demo/stage`, or `apply_stage` on an Unleash
server, then waiting until the target reports the stage from live flags), a bounded workload
runs (`Workload`: Zipf-distributed questions across workspaces and clients, near-duplicates,
session writes that invalidate), and the stage is measured twice: client-side (latency by the
`X-CacheGate` path of each response, errors) and server-side (`/metrics` deltas: hits by layer,
would-be hits, fresh calls and money avoided, agreement).
The report never holds a tenant id or a question: only counts and durations.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import math
import random
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, TextIO
from urllib.parse import urlsplit

import httpx
from prometheus_client.parser import text_string_to_metric_families

from cachegate.workload import (
    Catalog,
    CreateSession,
    DeleteSession,
    Mix,
    Operation,
    Query,
    UpdateSession,
    Workload,
)

TENANT_HEADER = "X-Workspace-ID"
PATHS = ("hit", "miss", "shadow-hit", "shadow-miss", "bypass")
"""Values of `X-CacheGate`, in report order."""
NO_HEADER = "none"
DEFAULT_STAGES = ("off", "dark-launch", "l2", "l1-10", "l1-50", "l1-100")


class ReplayError(RuntimeError):
    """The replay cannot go on: the target or the flag server did not do what was asked."""


def check_loopback(url: str) -> str:
    """`url` without a trailing slash if its host is loopback; `ValueError` otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    host = parts.hostname
    loopback = host == "localhost"
    if not loopback:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
    if not loopback:
        raise ValueError(
            f"replay drives load at loopback targets only (127.0.0.0/8, ::1, localhost), "
            f"not {host!r}"
        )
    return url.rstrip("/")


# --- metrics -------------------------------------------------------------------------------------


class Samples:
    """One scrape of a Prometheus text endpoint: sample values by name and labels."""

    def __init__(self, values: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> None:
        self.values = values

    @classmethod
    def parse(cls, text: str) -> Samples:
        """Parse the exposition format."""
        values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                values[sample.name, tuple(sorted(sample.labels.items()))] = float(sample.value)
        return cls(values)

    def has(self, name: str) -> bool:
        """Whether any sample is called `name`."""
        return any(key == name for key, _ in self.values)

    def total(self, name: str, **labels: str) -> float:
        """The sum of the samples called `name` whose labels include `labels`."""
        wanted = set(labels.items())
        return math.fsum(
            value
            for (key, sample_labels), value in self.values.items()
            if key == name and wanted <= set(sample_labels)
        )

    def __sub__(self, other: Samples) -> Samples:
        keys = set(self.values) | set(other.values)
        return Samples({k: self.values.get(k, 0.0) - other.values.get(k, 0.0) for k in keys})


# --- results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Percentiles:
    """Nearest-rank p50 and p95, and the mean, of some durations, in seconds."""

    count: int
    p50: float
    p95: float
    mean: float

    @classmethod
    def of(cls, durations: Sequence[float]) -> Percentiles | None:
        """None for no durations."""
        if not durations:
            return None
        ordered = sorted(durations)

        def rank(q: float) -> float:
            return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]

        return cls(len(ordered), rank(0.50), rank(0.95), math.fsum(ordered) / len(ordered))


@dataclass(frozen=True)
class Layer:
    """One cache layer's lookups in a stage: served (hit/miss) and shadow (would-be)."""

    hits: float
    misses: float
    shadow_hits: float
    shadow_misses: float
    calls_avoided: float
    cost_avoided: float

    @property
    def hit_rate(self) -> float | None:
        """Hits over served lookups; None when nothing was looked up to serve."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else None

    @property
    def shadow_hit_rate(self) -> float | None:
        """Would-be hits over shadow lookups; None without shadow lookups."""
        lookups = self.shadow_hits + self.shadow_misses
        return self.shadow_hits / lookups if lookups else None


@dataclass(frozen=True)
class Agreement:
    """Comparison outcomes of one layer and kind (shadow, verify, noise) in a stage."""

    match: float
    mismatch: float
    error: float

    @property
    def compared(self) -> float:
        """All comparisons."""
        return self.match + self.mismatch + self.error

    @property
    def rate(self) -> float | None:
        """Matches over comparisons; None without any."""
        return self.match / self.compared if self.compared else None


@dataclass
class StageResult:
    """What one stage measured."""

    stage: str
    seconds: float
    queries: int
    writes: int
    errors: int
    paths: dict[str, int]
    latency: dict[str, Percentiles]
    """By `X-CacheGate` path, and `all` for every answered query."""
    l1: Layer
    l2: Layer
    agreement: dict[str, Agreement]
    """`l1-shadow`, `l1-verify`, `l1-noise`, `l2-shadow`."""
    model_calls: float | None
    """Fresh answers generated (the demo's counter; None for other targets)."""
    embed_calls: float | None
    """Question embeddings that reached the provider (the demo's counter)."""
    invalidations: float
    store_failures: float
    query_cost: float

    @property
    def cost_avoided(self) -> float:
        """Dollars avoided by both layers."""
        return self.l1.cost_avoided + self.l2.cost_avoided

    @property
    def cost_saved(self) -> float | None:
        """Money avoided over what the stage's queries cost uncached."""
        spend = self.queries * self.query_cost
        return self.cost_avoided / spend if spend else None

    @property
    def served_from_cache(self) -> float | None:
        """Share of answered queries served from L1."""
        answered = sum(self.paths.values())
        return self.paths.get("hit", 0) / answered if answered else None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON: every figure, with rates computed."""
        data = asdict(self)
        data["latency"] = {path: asdict(p) for path, p in self.latency.items()}
        for name, layer in (("l1", self.l1), ("l2", self.l2)):
            data[name]["hit_rate"] = layer.hit_rate
            data[name]["shadow_hit_rate"] = layer.shadow_hit_rate
        for name, agreement in self.agreement.items():
            data["agreement"][name]["rate"] = agreement.rate
        data["cost_avoided"] = self.cost_avoided
        data["cost_saved"] = self.cost_saved
        data["served_from_cache"] = self.served_from_cache
        return data


def measure(
    stage: str,
    delta: Samples,
    *,
    seconds: float,
    observations: Iterable[tuple[str, float]],
    writes: int,
    errors: int,
    namespace: str = "cachegate",
    query_cost: float = 0.017,
) -> StageResult:
    """A stage's result from its `/metrics` delta and the client-side observations
    ((path, seconds) per answered query)."""
    ns = namespace
    by_path: dict[str, list[float]] = {}
    for path, duration in observations:
        by_path.setdefault(path, []).append(duration)
    latency = {path: p for path, d in by_path.items() if (p := Percentiles.of(d)) is not None}
    everything = Percentiles.of([d for durations in by_path.values() for d in durations])
    if everything is not None:
        latency["all"] = everything

    def layer(name: str) -> Layer:
        return Layer(
            hits=delta.total(f"{ns}_cache_hits_total", cache_layer=name),
            misses=delta.total(f"{ns}_cache_misses_total", cache_layer=name),
            shadow_hits=delta.total(f"{ns}_shadow_lookups_total", cache_layer=name, result="hit"),
            shadow_misses=delta.total(
                f"{ns}_shadow_lookups_total", cache_layer=name, result="miss"
            ),
            calls_avoided=delta.total(f"{ns}_fresh_calls_avoided_total", cache_layer=name),
            cost_avoided=delta.total(f"{ns}_cost_avoided_dollars_total", cache_layer=name),
        )

    def agreement(name: str, kind: str) -> Agreement:
        def count(outcome: str) -> float:
            return delta.total(
                f"{ns}_comparisons_total", cache_layer=name, kind=kind, outcome=outcome
            )

        return Agreement(count("match"), count("mismatch"), count("error"))

    model = f"{ns}_demo_model_calls_total"
    embeds = f"{ns}_demo_embed_calls_total"
    return StageResult(
        stage=stage,
        seconds=seconds,
        queries=sum(len(d) for d in by_path.values()),
        writes=writes,
        errors=errors,
        paths={path: len(d) for path, d in by_path.items()},
        latency=latency,
        l1=layer("query_result"),
        l2=layer("embedding"),
        agreement={
            "l1-shadow": agreement("query_result", "shadow"),
            "l1-verify": agreement("query_result", "verify"),
            "l1-noise": agreement("query_result", "noise"),
            "l2-shadow": agreement("embedding", "shadow"),
        },
        model_calls=delta.total(model) if delta.has(model) else None,
        embed_calls=(delta.total(embeds, input_type="search_query") if delta.has(embeds) else None),
        invalidations=delta.total(f"{ns}_cache_invalidations_total"),
        store_failures=delta.total(f"{ns}_store_failures_total"),
        query_cost=query_cost,
    )


# --- driving -------------------------------------------------------------------------------------


class Switcher(Protocol):
    """Moves the target's flags to a stage."""

    async def switch(self, stage: str) -> None:
        """Return once the target decides by `stage`'s flags."""
        ...


class DemoSwitcher:
    """Switches the demo's offline flags through its demo-only `POST /_demo/stage`."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def switch(self, stage: str) -> None:
        """Ask the demo to load `stage`."""
        try:
            response = await self.client.post("/_demo/stage", json={"stage": stage})
        except httpx.HTTPError as error:
            raise ReplayError(f"cannot switch the stage: {type(error).__name__}") from error
        if response.status_code != 200:
            detail = _error_text(response)
            raise ReplayError(f"the target refused stage {stage!r}: {detail}")


class UnleashSwitcher:
    """Moves the flags on an Unleash server (`apply_stage`), then waits until the target says
    it decides by them: `GET /_demo/stage` reports the stage, from live flags.

    A target that does not follow within `timeout` seconds (Unleash unreachable from it, flags
    edited meanwhile, another project or environment) is a `ReplayError` naming what it reports.
    """

    def __init__(
        self,
        apply: Callable[[str], None],
        client: httpx.AsyncClient,
        *,
        timeout: float = 60.0,
        poll: float = 0.5,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.apply = apply
        self.client = client
        self.timeout = timeout
        self.poll = poll
        self.sleep = sleep
        self.clock = clock

    async def switch(self, stage: str) -> None:
        """Apply `stage` in a thread (the admin client blocks), then wait for the target."""
        await asyncio.to_thread(self.apply, stage)
        deadline = self.clock() + self.timeout
        while True:
            report = await self._report()
            found = report.get("flags")
            flags: dict[str, Any] = found if isinstance(found, dict) else {}
            source = flags.get("source")
            if report.get("stage") == stage and source == "live":
                return
            if self.clock() >= deadline:
                differences = flags.get("differences") or []
                detail = f"; differs in: {'; '.join(map(str, differences))}" if differences else ""
                raise ReplayError(
                    f"the target did not follow stage {stage!r} within {self.timeout:g} s: it "
                    f"reports stage {report.get('stage')!r} from {source or 'unknown'} flags"
                    f"{detail}"
                )
            await self.sleep(self.poll)

    async def _report(self) -> dict[str, Any]:
        try:
            response = await self.client.get("/_demo/stage")
        except httpx.HTTPError as error:
            raise ReplayError(f"cannot read the target's stage: {type(error).__name__}") from error
        if response.status_code != 200:
            raise ReplayError(
                f"the target does not report its flag stage (GET /_demo/stage: "
                f"{_error_text(response)})"
            )
        try:
            report = response.json()
        except ValueError:
            report = None
        if not isinstance(report, dict):
            raise ReplayError("the target's GET /_demo/stage did not answer a JSON object")
        return report


def _error_text(response: httpx.Response) -> str:
    try:
        payload = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    message = payload.get("error") if isinstance(payload, dict) else None
    return f"HTTP {response.status_code} {message or ''}".strip()


@dataclass(frozen=True)
class ReplayConfig:
    """One replay: where, which stages, how much load per stage, and the workload's shape."""

    url: str = "http://127.0.0.1:8000"
    stages: tuple[str, ...] = DEFAULT_STAGES
    requests: int = 400
    """Requests (questions and writes) per stage at most."""
    duration: float = 120.0
    """Seconds per stage at most."""
    concurrency: int = 16
    seed: int = 1
    catalog: Catalog = field(default_factory=Catalog)
    mix: Mix = field(default_factory=Mix)
    namespace: str = "cachegate"
    query_cost: float = 0.017
    timeout: float = 30.0

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("at least one stage is needed")
        if self.requests < 1 or self.duration <= 0 or self.concurrency < 1:
            raise ValueError("requests, duration and concurrency must be positive")
        if self.requests > 1_000_000 or self.concurrency > 1024 or self.duration > 86_400:
            raise ValueError("requests, duration or concurrency out of range")
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")


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
    url = check_loopback(config.url)
    limits = httpx.Limits(max_connections=config.concurrency + 2)
    async with httpx.AsyncClient(
        base_url=url, timeout=config.timeout, limits=limits, transport=transport
    ) as client:
        return await Replay(config, client, switcher(client), progress=progress).run()


class _Held:
    """The switcher of autopilot mode: the autopilot owns the flags, the replay only loads."""

    async def switch(self, stage: str) -> None:
        """Nothing: the stage is whatever the autopilot holds."""


async def replay_autopilot(
    config: ReplayConfig,
    *,
    current: Callable[[], str | None],
    step: Callable[[], bool],
    rounds: int,
    progress: Progress | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> list[StageResult]:
    """Autopilot mode: load the target at the stage Unleash holds (`current`, read in a thread),
    measure it as one round, then let the autopilot take one step (`step`, in a thread; True
    ends the run: last stage or rollback). At most `rounds` rounds; a result per round."""
    url = check_loopback(config.url)
    limits = httpx.Limits(max_connections=config.concurrency + 2)
    async with httpx.AsyncClient(
        base_url=url, timeout=config.timeout, limits=limits, transport=transport
    ) as client:
        runner = Replay(config, client, _Held(), progress=progress)
        results = []
        for number in range(1, rounds + 1):
            stage = await asyncio.to_thread(current) or "unknown"
            results.append(await runner.run_stage(stage, f"[{number}]"))
            if await asyncio.to_thread(step):
                break
        return results


# --- reports -------------------------------------------------------------------------------------


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f} %"


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.1f}" if ms < 10 else f"{ms:.0f}"


def _latency(p: Percentiles | None) -> str:
    return "-" if p is None else f"{_ms(p.p50)} / {_ms(p.p95)} ({p.count})"


def _agreement(a: Agreement) -> str:
    if not a.compared:
        return "-"
    return f"{a.match:.0f}/{a.compared:.0f} ({_percent(a.rate)})"


def _versus(latency: Percentiles | None, base: Percentiles | None, field: str) -> str:
    """The change of one statistic against the `off` stage, in percent."""
    if latency is None or base is None or getattr(base, field) <= 0:
        return "-"
    return f"{(getattr(latency, field) / getattr(base, field) - 1) * 100:+.0f} %"


def _baseline(results: Sequence[StageResult]) -> Percentiles | None:
    for result in results:
        if result.stage == "off":
            return result.latency.get("all")
    return None


def tables(results: Sequence[StageResult]) -> list[tuple[str, list[str], list[list[str]]]]:
    """The report as (title, header, rows) tables: cache and cost, latency, safety."""
    base = _baseline(results)
    cache_rows = []
    latency_rows = []
    safety_rows = []
    for r in results:
        cache_rows.append(
            [
                r.stage,
                str(r.queries),
                str(r.writes),
                _percent(r.l1.hit_rate),
                _percent(r.l1.shadow_hit_rate),
                _percent(r.l2.hit_rate),
                _percent(r.l2.shadow_hit_rate),
                _percent(r.served_from_cache),
                _count(r.model_calls),
                _count(r.embed_calls),
                f"{r.l1.calls_avoided:.0f} / {r.l2.calls_avoided:.0f}",
                f"{r.cost_avoided:.3f}",
                _percent(r.cost_saved),
            ]
        )
        overall = r.latency.get("all")
        latency_rows.append(
            [
                r.stage,
                _latency(overall),
                "-" if overall is None else _ms(overall.mean),
                _versus(overall, base, "p50"),
                _versus(overall, base, "p95"),
                _versus(overall, base, "mean"),
                *(_latency(r.latency.get(path)) for path in PATHS),
            ]
        )
        safety_rows.append(
            [
                r.stage,
                _agreement(r.agreement["l1-shadow"]),
                _agreement(r.agreement["l1-verify"]),
                _agreement(r.agreement["l2-shadow"]),
                _agreement(r.agreement["l1-noise"]),
                f"{r.invalidations:.0f}",
                f"{r.store_failures:.0f}",
                str(r.errors),
            ]
        )
    return [
        (
            "Hit rates, fresh calls and money (server-side, /metrics deltas)",
            [
                "stage",
                "queries",
                "writes",
                "L1 hit",
                "L1 would-hit",
                "L2 hit",
                "L2 would-hit",
                "served from L1",
                "model calls",
                "embed calls",
                "avoided L1/L2",
                "$ avoided",
                "cost saved",
            ],
            cache_rows,
        ),
        (
            "Latency by path, ms p50 / p95 (n), client-side",
            ["stage", "all", "mean", "p50 vs off", "p95 vs off", "mean vs off", *PATHS],
            latency_rows,
        ),
        (
            "Agreement and errors",
            [
                "stage",
                "L1 shadow",
                "L1 verify",
                "L2 shadow",
                "L1 noise",
                "invalidations",
                "store failures",
                "errors",
            ],
            safety_rows,
        ),
    ]


def render_text(results: Sequence[StageResult]) -> str:
    """Aligned plain-text tables for a terminal."""
    out: list[str] = []
    for title, header, rows in tables(results):
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        out.append(title)
        for row in [header, *rows]:
            cells = [
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            ]
            out.append("  ".join(cells).rstrip())
        out.append("")
    return "\n".join(out)


def render_markdown(results: Sequence[StageResult]) -> str:
    """GitHub-flavoured markdown tables."""
    out: list[str] = []
    for title, header, rows in tables(results):
        out.append(f"**{title}**")
        out.append("")
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "|".join(["---", *["---:"] * (len(header) - 1)]) + "|")
        out.extend("| " + " | ".join(row) + " |" for row in rows)
        out.append("")
    return "\n".join(out)


def render_json(results: Sequence[StageResult], config: ReplayConfig) -> str:
    """Every figure as JSON, with the replay's settings (no target data)."""
    settings = {
        "stages": list(config.stages),
        "requests": config.requests,
        "duration": config.duration,
        "concurrency": config.concurrency,
        "seed": config.seed,
        "catalog": asdict(config.catalog),
        "mix": asdict(config.mix),
        "query_cost": config.query_cost,
    }
    document = {"settings": settings, "stages": [r.to_json() for r in results]}
    return json.dumps(document, indent=2, sort_keys=True)


def write_output(text: str, destination: str, stdout: TextIO | None = None) -> None:
    """Write `text` to a file, or to `stdout` (default `sys.stdout`) for `-`."""
    if destination == "-":
        (stdout or sys.stdout).write(text if text.endswith("\n") else text + "\n")
        return
    with open(destination, "w", encoding="utf-8") as handle:
        handle.write(text if text.endswith("\n") else text + "\n")
