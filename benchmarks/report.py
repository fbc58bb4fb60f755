"""The markdown report: machine, one table per group with ratios to its baseline, and targets."""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import median
from typing import Any

from benchmarks.encryption import EncryptionResult
from benchmarks.encryption import render as render_encryption
from benchmarks.flag_cost import FlagResult
from benchmarks.freshness import FreshnessResult
from benchmarks.freshness import render as render_freshness
from benchmarks.harness import Samples
from benchmarks.invalidation import InvalidationResult
from benchmarks.l1 import InProcess, OverHttp
from benchmarks.l2 import BATCH, HIT_RATES, L2Result

ORIGINAL_HIT_MS = 20.0
"""The original plan's reported L1 hit latency."""

LABELS = {
    "bare": "bare Starlette POST endpoint",
    "body_read": "bare + a pure-ASGI middleware that reads and replays the body",
    "no_policy": "behind CacheGate, route without a policy",
    "flags_off": "behind CacheGate, cached route, every flag off (bypass)",
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
        ["bare", "no_policy", "body_read", "flags_off", "hit_memory", "hit_redis"],
    ),
    ("2. Hit path against the one-GET floor (POST)", "floor_post", ["floor_post", "hit_redis"]),
    (
        "3. The HTTP-cache peer: fastapi-cache2 (GET, the only method it caches)",
        "floor_get",
        ["floor_get", "fastapi_floor_get", "fastapi_cachegate_get", "fastapi_cache2_get"],
    ),
]


@dataclass
class Target:
    text: str
    measured: str
    ratio: float
    limit: float
    at_most: bool

    @property
    def met(self) -> bool:
        if math.isnan(self.ratio):
            return False
        return self.ratio <= self.limit if self.at_most else self.ratio >= self.limit


def us(ns: float) -> str:
    if math.isnan(ns):
        return "n/a"
    if ns >= 10_000_000:
        return f"{ns / 1e6:,.1f} ms"
    if ns >= 1_000_000:
        return f"{ns / 1e6:,.2f} ms"
    if ns < 1_000:
        return f"{ns:,.0f} ns"
    return f"{ns / 1e3:,.1f} µs"


def x(ratio: float) -> str:
    return "n/a" if math.isnan(ratio) else f"{ratio:.2f}x"


def _div(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else float("nan")


def _rps(http: OverHttp, name: str) -> float:
    results = http.rps.get(name) or []
    return median([r.requests_per_second for r in results]) if results else float("nan")


def _p50(http: OverHttp, name: str) -> float:
    results = http.rps.get(name) or []
    return median([r.p50_ms for r in results]) if results else float("nan")


def _cpu(http: OverHttp, name: str) -> float:
    """The uvicorn worker's CPU time per request, over all rounds, in µs."""
    results = [r for r in http.rps.get(name) or [] if not math.isnan(r.server_cpu_s)]
    requests = sum(r.requests for r in results)
    return sum(r.server_cpu_s for r in results) / requests * 1e6 if requests else float("nan")


def _errors(http: OverHttp, name: str) -> int:
    return sum(r.errors for r in http.rps.get(name) or [])


def targets(
    inproc: InProcess | None,
    http: OverHttp | None,
    l2: L2Result | None,
    inval: InvalidationResult | None,
) -> list[Target]:
    out: list[Target] = []
    if inproc is not None:
        s = inproc.samples
        out.append(
            Target(
                "No policy on the route: within 3 % of bare (in-process p50)",
                f"{us(s['no_policy'].median)} vs {us(s['bare'].median)}",
                _div(s["no_policy"].median, s["bare"].median),
                1.03,
                True,
            )
        )
        out.append(
            Target(
                "Every flag off on a cached route: within 10 % of bare plus the body read "
                "(in-process p50)",
                f"{us(s['flags_off'].median)} vs {us(s['body_read'].median)} (vs bare "
                f"{us(s['bare'].median)}: {x(_div(s['flags_off'].median, s['bare'].median))})",
                _div(s["flags_off"].median, s["body_read"].median),
                1.10,
                True,
            )
        )
        out.append(
            Target(
                "Hit path: at most 1.5x the one-GET floor in-process (p50, RedisStore)",
                f"{us(s['hit_redis'].median)} vs {us(s['floor_post'].median)}",
                _div(s["hit_redis"].median, s["floor_post"].median),
                1.5,
                True,
            )
        )
    if http is not None and http.available:
        out.append(
            Target(
                "Hit path: at least 0.75x the floor's requests/s over uvicorn (RedisStore)",
                f"{_rps(http, 'hit_redis'):,.0f} vs {_rps(http, 'floor_post'):,.0f} req/s",
                _div(_rps(http, "hit_redis"), _rps(http, "floor_post")),
                0.75,
                False,
            )
        )
        out.append(
            Target(
                "Hit path: at least 2x fastapi-cache2's throughput (uvicorn, same GET endpoint)",
                f"{_rps(http, 'fastapi_cachegate_get'):,.0f} vs "
                f"{_rps(http, 'fastapi_cache2_get'):,.0f} req/s",
                _div(_rps(http, "fastapi_cachegate_get"), _rps(http, "fastapi_cache2_get")),
                2.0,
                False,
            )
        )
        single = http.single.get("hit_redis")
        if single is not None:
            out.append(
                Target(
                    f"Hit path: at least 20x faster than the original {ORIGINAL_HIT_MS:.0f} ms "
                    "hit (p50 over uvicorn, one connection)",
                    f"{single.p50_ms * 1000:,.0f} µs",
                    _div(ORIGINAL_HIT_MS, single.p50_ms),
                    20.0,
                    False,
                )
            )
    if l2 is not None:
        floor, ours = l2.systems[0], l2.systems[1]
        trips = l2.round_trips.get((ours, 100), -1)
        out.append(
            Target(
                f"L2 all-hit batch of {BATCH}: one store round trip",
                f"{trips} round trip(s), {l2.commands.get((ours, 100), -1)} command(s)",
                float(trips),
                1.0,
                True,
            )
        )
        ours_t = l2.samples[ours, 100].median
        out.append(
            Target(
                f"L2 all-hit batch of {BATCH}: within 1.5x of the raw MGET-and-decode floor",
                f"{us(ours_t)} vs {us(l2.samples[floor, 100].median)}",
                _div(ours_t, l2.samples[floor, 100].median),
                1.5,
                True,
            )
        )
        for peer in l2.systems[2:]:
            out.append(
                Target(
                    f"L2 all-hit batch: at least 5x faster than {peer}",
                    f"{us(l2.samples[peer, 100].median)} vs {us(ours_t)}",
                    _div(l2.samples[peer, 100].median, ours_t),
                    5.0,
                    False,
                )
            )
        for peer in l2.systems[2:4]:
            out.append(
                Target(
                    f"L2 bytes per vector: at most 0.3x {peer}'s JSON (MEMORY USAGE)",
                    f"{l2.sizes[ours].memory_usage:,.0f} vs {l2.sizes[peer].memory_usage:,.0f} B",
                    _div(l2.sizes[ours].memory_usage, l2.sizes[peer].memory_usage),
                    0.3,
                    True,
                )
            )
    if inval is not None and inval.sizes:
        small, large = inval.sizes[0], inval.sizes[-1]
        out.append(
            Target(
                f"Invalidation flat from {small:,} to {large:,} entries (p50 ratio at most 1.5)",
                f"{us(inval.invalidate[large].median)} vs {us(inval.invalidate[small].median)}",
                _div(inval.invalidate[large].median, inval.invalidate[small].median),
                1.5,
                True,
            )
        )
        out.append(
            Target(
                f"…while SCAN+DEL grows with the count ({large:,} vs {small:,}; 'grows' = 10x+)",
                f"{us(inval.scan_del[large].median)} vs {us(inval.scan_del[small].median)}",
                _div(inval.scan_del[large].median, inval.scan_del[small].median),
                10.0,
                False,
            )
        )
    return out


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def render(
    *,
    title: str,
    machine: dict[str, str],
    settings: list[str],
    inproc: InProcess | None,
    http: OverHttp | None,
    l2: L2Result | None,
    inval: InvalidationResult | None,
    flags: FlagResult | None,
    notes: list[str],
    encryption: EncryptionResult | None = None,
    kill_switch: dict[str, Any] | None = None,
    freshness: FreshnessResult | None = None,
) -> str:
    lines = [f"# {title}", ""]
    lines += _table(["machine", ""], [[k, v] for k, v in machine.items()])
    lines += ["", "How: " + " ".join(settings), ""]
    lines += [
        "What each group measures and how to reproduce: [benchmarks/README.md](../README.md) "
        "(`make bench`).",
        "",
    ]

    found = targets(inproc, http, l2, inval)
    lines += ["## Targets (issue 6)", ""]
    lines += _table(
        ["target", "measured", "ratio", "limit", "met"],
        [
            [
                t.text,
                t.measured,
                x(t.ratio) if "round trip" not in t.text else f"{t.ratio:.0f}",
                ("≤ " if t.at_most else "≥ ")
                + (f"{t.limit:.2f}x" if "round trip" not in t.text else f"{t.limit:.0f}"),
                "**met**" if t.met else "**not met**",
            ]
            for t in found
        ],
    )
    lines.append("")

    if inproc is not None:
        lines += [
            "## L1 in-process (raw ASGI driver, one request at a time)",
            "",
            f"{inproc.iterations:,} requests per variant, rounds interleaved; per-request time.",
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
                        x(_div(s.median, inproc.samples[base].median)),
                    ]
                )
            lines += _table(["variant", "median", "p95", f"ratio vs {base}"], rows)
            lines.append("")
        if inproc.store:
            lines += [
                "### Where a Redis hit's store time goes (one call, same private Redis)",
                "",
            ]
            names = list(inproc.store)
            base_store = inproc.store[names[0]].median
            rows = [
                [name, us(s.median), us(s.p95), x(_div(s.median, base_store))]
                for name, s in inproc.store.items()
            ]
            lines += _table(["call", "median", "p95", "ratio vs raw GET"], rows)
            lines.append("")

    if http is not None:
        lines += ["## L1 over uvicorn (requests/s)", ""]
        if not http.available:
            lines += [f"Not run: {http.note}.", ""]
        else:
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
                            x(_div(_rps(http, name), _rps(http, base))),
                            f"{_cpu(http, name):,.0f} µs",
                            x(_div(_cpu(http, name), _cpu(http, base))),
                            str(_errors(http, name)),
                        ]
                    )
                lines += _table(
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
                            x(_div(result.p50_ms, base_single.p50_ms if base_single else 0.0)),
                        ]
                    )
                lines += _table(["variant", "p50", "p99", "req/s", "p50 ratio vs floor_post"], rows)
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
                        x(_div(s.median, l2.samples[floor, rate].median)),
                        str(l2.round_trips[name, rate]),
                        str(l2.commands[name, rate]),
                    ]
                )
            lines += _table(
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
                x(_div(size.memory_usage, reference)),
            ]
            for name, size in l2.sizes.items()
        ]
        lines += _table(
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
                    x(_div(inv.median, inval.invalidate[small].median)),
                    str(inval.invalidate_round_trips),
                    us(scan.median),
                    f"{scan.count}",
                    x(_div(scan.median, inval.invalidate[size].median)),
                    str(inval.scan_del_round_trips.get(size, "")),
                ]
            )
        lines += _table(
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
        lines += ["## 6. Flag evaluation cost per request", ""]
        if not flags.available:
            lines += [f"Not run: {flags.note}.", ""]
        else:
            lines += [
                f"`flags/{flags.stage}.json` evaluated offline by the Unleash SDK, 1,000 "
                "tenants; each sample is the mean decision time over one pass.",
                "",
            ]
            memoised = flags.decide["FlagRollout.decide, memoised"].median
            rows = [
                [name, us(s.median), us(s.p95), x(_div(s.median, memoised))]
                for name, s in flags.decide.items()
            ]
            lines += _table(["decision", "median", "p95", "ratio vs memoised"], rows)
            lines += [
                "",
                f"Where it is paid: the in-process MemoryStore hit path, `flags/"
                f"{flags.hit_stage}.json`.",
                "",
            ]
            static = flags.hit_path["hit path, StaticRollout"].median
            rows = [
                [name, us(s.median), us(s.p95), x(_div(s.median, static))]
                for name, s in flags.hit_path.items()
            ]
            lines += _table(["request", "median", "p95", "ratio vs StaticRollout"], rows)
            lines.append("")

    if encryption is not None:
        lines += render_encryption(encryption)
    if freshness is not None:
        lines += render_freshness(freshness)

    if kill_switch is not None:
        lines += render_kill_switch(kill_switch)

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
    lines += _table(
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
    lines += _table(
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
