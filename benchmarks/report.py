"""The markdown report: machine, one table per group with ratios to its baseline, and targets."""

from __future__ import annotations

from dataclasses import dataclass
from statistics import median
from typing import Any

from benchmarks import targets
from benchmarks.encryption import EncryptionResult
from benchmarks.encryption import render as render_encryption
from benchmarks.flag_cost import FlagResult
from benchmarks.freshness import FreshnessResult
from benchmarks.freshness import render as render_freshness
from benchmarks.harness import Samples
from benchmarks.invalidation import InvalidationResult
from benchmarks.l1 import INSTANCES, InProcess, OverHttp
from benchmarks.l2 import BATCH, HIT_RATES, L2Result
from benchmarks.streaming import StreamingResult
from benchmarks.streaming import render as render_streaming
from benchmarks.tables import div, table, timings, us, x
from benchmarks.targets import cpu_per_request

LABELS = {
    "bare": "bare Starlette POST endpoint",
    "body_read": "bare + a pure-ASGI middleware that reads and replays the body",
    "no_policy": "behind CacheGate, route without a policy",
    "flags_off": "behind CacheGate, cached route, every flag off (bypass)",
    "least_bypass": "the least a bypass can do: its steps inlined in one middleware",
    "hit_memory": "CacheGate hit, MemoryStore",
    "hit_redis": "CacheGate hit, RedisStore",
    "floor_post": "floor: one raw `redis.asyncio` GET, bytes returned (POST, body read)",
    "floor_get": "floor: one raw `redis.asyncio` GET, bytes returned (GET, Starlette)",
    "fastapi_floor_get": "floor as a FastAPI endpoint (GET)",
    "fastapi_cachegate_get": "CacheGate hit, RedisStore, on the FastAPI endpoint (GET)",
    "fastapi_cache2_get": "fastapi-cache2 hit, RedisBackend, same FastAPI endpoint (GET)",
}

GROUPS: list[tuple[str, str, list[str]]] = [
    (
        "1. Middleware overhead",
        "bare",
        [
            "bare",
            "no_policy",
            "body_read",
            "flags_off",
            "least_bypass",
            "hit_memory",
            "hit_redis",
        ],
    ),
    ("2. Hit path against the one-GET floor (POST)", "floor_post", ["floor_post", "hit_redis"]),
    (
        "3. The HTTP-cache peer: fastapi-cache2 (GET, the only method it caches)",
        "floor_get",
        ["floor_get", "fastapi_floor_get", "fastapi_cachegate_get", "fastapi_cache2_get"],
    ),
]


def _rps(http: OverHttp, name: str) -> float:
    results = http.rps.get(name) or []
    return median([r.requests_per_second for r in results]) if results else float("nan")


def _p50(http: OverHttp, name: str) -> float:
    results = http.rps.get(name) or []
    return median([r.p50_ms for r in results]) if results else float("nan")


def _heading(title: str, available: bool, note: str) -> list[str]:
    """A group's heading, and why it did not run when it did not."""
    return [title, ""] if available else [title, "", f"Not run: {note}.", ""]


def _errors(http: OverHttp, name: str) -> int:
    return sum(r.errors for r in http.rps.get(name) or [])


@dataclass
class Measured:
    """What one run measured, group by group (None: the group did not run)."""

    inprocess: InProcess | None = None
    uvicorn: OverHttp | None = None
    l2: L2Result | None = None
    invalidation: InvalidationResult | None = None
    flags: FlagResult | None = None
    encryption: EncryptionResult | None = None
    streaming: StreamingResult | None = None
    kill_switch: dict[str, Any] | None = None
    freshness: FreshnessResult | None = None


def target_rows(measured: Measured) -> list[targets.Row]:
    """The issue's table from what this run measured."""
    return targets.rows(measured.inprocess, measured.uvicorn, measured.l2, measured.invalidation)


def render(
    *,
    title: str,
    machine: dict[str, str],
    settings: list[str],
    measured: Measured,
    notes: list[str],
) -> str:
    inproc, http, l2 = measured.inprocess, measured.uvicorn, measured.l2
    inval, flags = measured.invalidation, measured.flags
    lines = [f"# {title}", ""]
    lines += table(["machine", ""], [[k, v] for k, v in machine.items()])
    lines += ["", "How: " + " ".join(settings), ""]
    lines += [
        "What each group measures and how to reproduce: [benchmarks/README.md](../README.md) "
        "(`make bench`).",
        "",
    ]

    lines += targets.render(target_rows(measured))

    if inproc is not None:
        lines += [
            "## L1 in-process (raw ASGI driver, one request at a time)",
            "",
            f"{inproc.iterations:,} requests per variant, spread over {INSTANCES} copies of each "
            "app, rounds interleaved; per-request time.",
            "",
        ]
        for title_, base, names in GROUPS:
            lines += [f"### {title_}", ""]
            rows = []
            for name in names:
                s: Samples = inproc.samples[name]
                rows.append(
                    [
                        LABELS[name],
                        us(s.median),
                        us(s.p95),
                        x(div(s.median, inproc.samples[base].median)),
                    ]
                )
            lines += table(["variant", "median", "p95", f"ratio vs {base}"], rows)
            lines.append("")
        if inproc.store:
            lines += [
                "### Where a Redis hit's store time goes (one call, same private Redis)",
                "",
            ]
            first = next(iter(inproc.store))
            lines += timings("call", inproc.store, first, "raw GET")
            lines.append("")

    if http is not None:
        lines += _heading("## L1 over uvicorn (requests/s)", http.available, http.note)
        if http.available:
            lines += [
                f"One uvicorn worker per app (uvloop, httptools) on CPU 0; `wrk -t1 -c"
                f"{http.connections} -d{http.duration:.0f}s` on CPU 1; median of {http.rounds} "
                "interleaved rounds after a 1 s warm-up each. Server CPU/request is the worker's "
                "user+system CPU time (from /proc) over all rounds divided by the requests "
                "served: unlike req/s it does not move when other work shares the CPU.",
                "",
            ]
            for title_, base, names in GROUPS:
                lines += [f"### {title_}", ""]
                rows = []
                for name in names:
                    rows.append(
                        [
                            LABELS[name],
                            f"{_rps(http, name):,.0f}",
                            f"{_p50(http, name) * 1000:,.0f} µs",
                            x(div(_rps(http, name), _rps(http, base))),
                            f"{cpu_per_request(http, name):,.0f} µs",
                            x(div(cpu_per_request(http, name), cpu_per_request(http, base))),
                            str(_errors(http, name)),
                        ]
                    )
                lines += table(
                    [
                        "variant",
                        "req/s",
                        "p50 latency",
                        f"req/s ratio vs {base}",
                        "server CPU/request",
                        "CPU ratio",
                        "errors",
                    ],
                    rows,
                )
                lines.append("")
            if http.single:
                lines += ["### Unloaded latency (one connection)", ""]
                base_single = http.single.get("floor_post")
                rows = []
                for name, result in http.single.items():
                    rows.append(
                        [
                            LABELS[name],
                            f"{result.p50_ms * 1000:,.0f} µs",
                            f"{result.p99_ms * 1000:,.0f} µs",
                            f"{result.requests_per_second:,.0f}",
                            x(div(result.p50_ms, base_single.p50_ms if base_single else 0.0)),
                        ]
                    )
                lines += table(["variant", "p50", "p99", "req/s", "p50 ratio vs floor_post"], rows)
                lines.append("")

    if l2 is not None:
        floor = l2.systems[0]
        lines += [
            f"## 4. L2 embedding caches: batches of {BATCH} texts, 1024-dim float vectors",
            "",
            "Each cache in front of the same Cohere stand-in (its own process) via "
            "`cohere.AsyncClientV2`; time of one whole batch. Round trips: client writes "
            "(a pipeline is one), counted in a separate untimed pass; commands: "
            "`INFO commandstats` delta for that pass.",
            "",
        ]
        for rate in HIT_RATES:
            lines += [f"### {rate} % hits ({l2.iterations.get(rate, 0)} batches per cache)", ""]
            rows = []
            for name in l2.systems:
                s = l2.samples[name, rate]
                rows.append(
                    [
                        name,
                        us(s.median),
                        us(s.p95),
                        x(div(s.median, l2.samples[floor, rate].median)),
                        str(l2.round_trips[name, rate]),
                        str(l2.commands[name, rate]),
                    ]
                )
            lines += table(
                ["cache", "median", "p95", "ratio vs floor", "round trips", "commands"], rows
            )
            lines.append("")
        lines += ["### Bytes stored per vector", ""]
        reference = l2.sizes[l2.systems[2]].memory_usage
        rows = [
            [
                name,
                size.kind,
                f"{size.memory_usage:,.0f}",
                f"{size.payload:,.0f}",
                x(div(size.memory_usage, reference)),
            ]
            for name, size in l2.sizes.items()
        ]
        lines += table(
            [
                "cache",
                "Redis type",
                "MEMORY USAGE (B)",
                "payload (B)",
                f"ratio vs {l2.systems[2]}",
            ],
            rows,
        )
        lines.append("")

    if inval is not None:
        lines += [
            "## 5. Invalidation: one INCR round trip against SCAN+DEL of a prefix",
            "",
            f"Entries created with {inval.populate}; `gate.invalidate(tenant)` timed with the "
            "entries present; SCAN+DEL = SCAN MATCH prefix COUNT 1000 and DEL per 1000 keys.",
            "",
        ]
        small = inval.sizes[0]
        rows = []
        for size in inval.sizes:
            inv, scan = inval.invalidate[size], inval.scan_del[size]
            rows.append(
                [
                    f"{size:,}",
                    us(inv.median),
                    us(inv.p95),
                    x(div(inv.median, inval.invalidate[small].median)),
                    str(inval.invalidate_round_trips),
                    us(scan.median),
                    f"{scan.count}",
                    x(div(scan.median, inval.invalidate[size].median)),
                    str(inval.scan_del_round_trips.get(size, "")),
                ]
            )
        lines += table(
            [
                "entries",
                "invalidate p50",
                "invalidate p95",
                f"vs {small:,}",
                "round trips",
                "SCAN+DEL (median)",
                "runs",
                "SCAN+DEL / invalidate",
                "SCAN+DEL round trips",
            ],
            rows,
        )
        lines.append("")

    if flags is not None:
        lines += _heading("## 6. Flag evaluation cost per request", flags.available, flags.note)
        if flags.available:
            lines += [
                f"`flags/{flags.stage}.json` evaluated offline by the Unleash SDK, 1,000 "
                "tenants; each sample is the mean decision time over one pass.",
                "",
            ]
            memoised = "FlagRollout.decide, memoised"
            lines += timings("decision", flags.decide, memoised, "memoised")
            lines += [
                "",
                f"Where it is paid: the in-process MemoryStore hit path, `flags/"
                f"{flags.hit_stage}.json`.",
                "",
            ]
            static = "hit path, StaticRollout"
            lines += timings("request", flags.hit_path, static, "StaticRollout")
            lines.append("")

    if measured.encryption is not None:
        lines += render_encryption(measured.encryption)
    if measured.freshness is not None:
        lines += render_freshness(measured.freshness)
    if measured.kill_switch is not None:
        lines += render_kill_switch(measured.kill_switch)
    if measured.streaming is not None:
        lines += render_streaming(measured.streaming)

    if notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    return "\n".join(lines)


def render_kill_switch(result: dict[str, Any]) -> list[str]:
    """Kill switch time to effect with the default poll, and the poll's cost on Unleash."""
    effects = sorted(result["effect_seconds"])
    lines = ["## Kill switch: time to effect", ""]
    lines += [
        "A connected `FlagRollout` with the default settings (poll every "
        f"{result['refresh_interval']} s) at `l1-100` on the real Unleash server; the kill switch "
        "is turned on through the admin API; measured until `decide()` says L1 off "
        "(what an autopilot rollback or a person's kill switch waits for).",
        "",
    ]
    lines += table(
        ["rounds", "median", "max"],
        [[str(len(effects)), f"{median(effects):.2f} s", f"{effects[-1]:.2f} s"]],
    )
    clients = result["clients"]
    lines += [
        "",
        f"Cost on the Unleash server: CPU of its process with {clients} clients polling, over "
        f"{result['window_seconds']:g} s (unchanged flags: 304 answers).",
        "",
    ]
    lines += table(
        ["poll interval", "polls per second", "server CPU (share of one core)"],
        [
            [
                f"{interval} s",
                f"{result[f'polls_per_s_{interval}s']:.1f}",
                f"{result[f'cpu_per_s_{interval}s'] * 100:.1f} %",
            ]
            for interval in (15, 1)
        ],
    )
    lines.append("")
    return lines
