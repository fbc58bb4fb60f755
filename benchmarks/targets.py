"""The performance targets of issue 15: one row per figure, each measured in this run beside its
floor or peers, with the ratio and whether the target is met.

The rows and peers are the issue's table. Every ratio is of two figures from the same run
(interleaved rounds), so the machine's load moves both sides alike; the report states the load.
Beside a target's ratio stands the middle half of the same ratio taken round by round: when the
limit falls inside it, the verdict is this run's luck as much as the code's, and says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import median

from benchmarks.harness import Samples, percentile, round_ratios
from benchmarks.invalidation import InvalidationResult
from benchmarks.l1 import InProcess, OverHttp
from benchmarks.l2 import BATCH, DIMENSION, L2Result
from benchmarks.tables import div, table, us, x

ALL_HIT = 100
LIMITS = {"hit_redis": 1.3, "flags_off": 1.10, "hit_memory": 1.5, "no_policy": 1.03}
"""The in-process apps' limits against their baseline (the one-GET floor for `hit_redis`, the
bare app for the others): one place for the report and `benchmarks.instructions`."""


@dataclass
class Check:
    """One ratio, and the limit it is held to (`limit` None: shown beside, not a target)."""

    label: str
    ratio: float
    limit: float | None = None
    at_most: bool = True
    shown: str = ""
    """The ratio cell's text when the plain `1.23x label` does not say it."""
    rounds: list[float] = field(default_factory=list)
    """The same ratio round by round (empty: not measured in rounds)."""

    @property
    def spread(self) -> tuple[float, float] | None:
        """The middle half of the per-round ratios (None with fewer than 4 rounds)."""
        if len(self.rounds) < 4:
            return None
        return percentile(self.rounds, 0.25), percentile(self.rounds, 0.75)

    @property
    def within_noise(self) -> bool:
        """Whether the limit lies within the middle half of the rounds: the verdict could
        have gone the other way on this machine in this run."""
        spread = self.spread
        return (
            self.limit is not None and spread is not None and spread[0] <= self.limit <= spread[1]
        )

    @property
    def met(self) -> bool:
        if self.limit is None:
            return True
        if math.isnan(self.ratio):
            return False
        return self.ratio <= self.limit if self.at_most else self.ratio >= self.limit

    @property
    def ratio_text(self) -> str:
        if self.shown:
            return self.shown
        close = self.limit is not None and f"{self.ratio:.2f}" == f"{self.limit:.2f}"
        shown = f"{self.ratio:.3f}x" if close else x(self.ratio)  # 1.303x is not "1.30x, met"
        spread = self.spread if self.limit is not None else None
        rounds = f" (rounds {spread[0]:.2f}x to {spread[1]:.2f}x)" if spread else ""
        return f"{shown} {self.label}{rounds}"

    @property
    def target_text(self) -> str:
        assert self.limit is not None
        return f"{'≤' if self.at_most else '≥'} {self.limit:g}x {self.label}"


@dataclass
class Row:
    figure: str
    ours: str
    peers: str
    checks: list[Check] = field(default_factory=list)

    @property
    def targets(self) -> list[Check]:
        return [check for check in self.checks if check.limit is not None]


def _rps(http: OverHttp, name: str) -> float:
    results = http.rps.get(name) or []
    return median([r.requests_per_second for r in results]) if results else float("nan")


def cpu_per_request(http: OverHttp, name: str) -> float:
    """The uvicorn worker's CPU time per request, over all rounds, in µs."""
    results = [r for r in http.rps.get(name) or [] if not math.isnan(r.server_cpu_s)]
    requests = sum(r.requests for r in results)
    return sum(r.server_cpu_s for r in results) / requests * 1e6 if requests else float("nan")


def _served(http: OverHttp, name: str) -> str:
    return f"{_rps(http, name):,.0f} req/s, {cpu_per_request(http, name):,.0f} µs CPU/request"


def _versus(ours: Samples, base: Samples, label: str, limit: float | None = None) -> Check:
    """`ours` over `base`, medians, with the ratio round by round."""
    return Check(label, div(ours.median, base.median), limit, rounds=round_ratios(ours, base))


def _in_process(inproc: InProcess) -> list[Row]:
    timed = inproc.samples
    s = {name: samples.median for name, samples in timed.items()}

    def versus_bare(figure: str, name: str) -> Row:
        check = _versus(timed[name], timed["bare"], "bare", LIMITS[name])
        return Row(figure, us(s[name]), f"bare {us(s['bare'])}", [check])

    return [
        Row(
            "Redis hit, in-process",
            us(s["hit_redis"]),
            f"one raw `redis.asyncio` GET + body read: {us(s['floor_post'])}",
            [_versus(timed["hit_redis"], timed["floor_post"], "floor", LIMITS["hit_redis"])],
        ),
        Row(
            "every layer off on a cached route",
            us(s["flags_off"]),
            f"bare Starlette POST that reads its body: {us(s['bare'])}; bare + a middleware "
            f"that reads and replays the body: {us(s['body_read'])}; the least a bypass can "
            f"do, its steps inlined: {us(s['least_bypass'])} "
            f"({x(div(s['least_bypass'], s['bare']))} bare)",
            [
                _versus(timed["flags_off"], timed["bare"], "bare", LIMITS["flags_off"]),
                Check("bare + body replay", div(s["flags_off"], s["body_read"])),
                Check("the least bypass", div(s["flags_off"], s["least_bypass"])),
            ],
        ),
        versus_bare("MemoryStore hit", "hit_memory"),
        versus_bare("no policy on the route", "no_policy"),
    ]


def _rps_at_least(http: OverHttp, ours: str, base: str, label: str, limit: float) -> Check:
    """`ours` req/s over `base`'s, medians, with the ratio round by round (each round ran
    every app once, in turn)."""
    pairs = zip(http.rps.get(ours) or [], http.rps.get(base) or [], strict=False)
    rounds = [div(a.requests_per_second, b.requests_per_second) for a, b in pairs]
    ratio = div(_rps(http, ours), _rps(http, base))
    return Check(label, ratio, limit, at_most=False, rounds=rounds)


def _uvicorn(http: OverHttp) -> Row:
    ours, floor = "hit_redis", "floor_post"
    ours_get, peer = "fastapi_cachegate_get", "fastapi_cache2_get"
    return Row(
        "Redis hit over uvicorn",
        f"POST: {_served(http, ours)}; on the FastAPI GET endpoint: {_served(http, ours_get)}",
        f"floor (POST): {_served(http, floor)}; fastapi-cache2 (same GET endpoint): "
        f"{_served(http, peer)}",
        [
            _rps_at_least(http, ours, floor, "floor", 0.8),
            _rps_at_least(http, ours_get, peer, "fastapi-cache2", 3.0),
            Check(
                "floor's CPU/request",
                div(cpu_per_request(http, ours), cpu_per_request(http, floor)),
            ),
        ],
    )


def _l2(l2: L2Result) -> Row:
    floor, ours, peers = l2.systems[0], l2.systems[1], l2.systems[2:]
    hit = {name: l2.samples[name, ALL_HIT] for name in l2.systems}
    t = {name: samples.median for name, samples in hit.items()}
    checks = [_versus(hit[ours], hit[floor], "floor", 1.3)]
    checks += [
        Check(
            f"faster than {peer}",
            div(t[peer], t[ours]),
            5.0,
            at_most=False,
            rounds=round_ratios(hit[peer], hit[ours]),
        )
        for peer in peers
    ]
    trips = l2.round_trips.get((ours, ALL_HIT), -1)
    return Row(
        f"L2 all-hit, {BATCH} x {DIMENSION}-d",
        f"{us(t[ours])}, {trips} round trip(s)",
        f"MGET + decode to lists: {us(t[floor])}; "
        + "; ".join(f"{peer} {us(t[peer])}" for peer in peers),
        checks,
    )


def _invalidation(inval: InvalidationResult) -> Row:
    small, large = inval.sizes[0], inval.sizes[-1]
    times = inval.invalidate
    over_incr = [div(times[n].median, inval.incr[n].median) for n in inval.sizes if n in inval.incr]
    low, high = (min(over_incr), max(over_incr)) if over_incr else (math.nan, math.nan)
    return Row(
        "invalidation",
        f"{inval.invalidate_round_trips} round trip; {us(times[small].median)} at {small:,} "
        f"entries, {us(times[large].median)} at {large:,}",
        "one INCR: "
        + ", ".join(f"{us(inval.incr[n].median)} at {n:,}" for n in inval.sizes if n in inval.incr),
        [
            Check(
                f"at {large:,} vs {small:,} entries (flat)",
                div(times[large].median, times[small].median),
                1.5,
            ),
            Check("one INCR", high, shown=f"{low:.1f}x to {high:.1f}x one INCR"),
        ],
    )


def rows(
    inproc: InProcess | None,
    http: OverHttp | None,
    l2: L2Result | None,
    inval: InvalidationResult | None,
) -> list[Row]:
    """The issue's table, in its order, for the groups that ran."""
    in_process = _in_process(inproc) if inproc is not None else []
    found = in_process[:1]
    if http is not None and http.available:
        found.append(_uvicorn(http))
    found += in_process[1:]
    if l2 is not None:
        found.append(_l2(l2))
    if inval is not None and inval.sizes:
        found.append(_invalidation(inval))
    return found


def render(found: list[Row]) -> list[str]:
    """The targets section: the table, and how many of its targets are met."""
    checks = [check for row in found for check in row.targets]
    met = sum(check.met for check in checks)
    close = sum(check.within_noise for check in checks)
    lines = ["## Targets (issue 15)", ""]
    lines += [
        f"{met} of {len(checks)} targets met; {close} of the verdicts within this run's noise. "
        "In-process: raw ASGI driver, medians; over uvicorn: one worker, `wrk`, median req/s "
        "of interleaved rounds, and the worker's CPU time per request; ratios of figures from "
        "this same run. In brackets, the middle half of a target's ratio taken round by round; "
        "a verdict is within noise when its limit falls inside that range.",
        "",
    ]
    body = []
    for row in found:
        hits = sum(check.met for check in row.targets)
        verdict = (
            "**met**"
            if hits == len(row.targets)
            else "**not met**"
            if hits == 0
            else f"**{hits} of {len(row.targets)} met**"
        )
        if any(check.within_noise for check in row.targets):
            verdict += " (within noise)"
        body.append(
            [
                row.figure,
                row.ours,
                row.peers,
                "; ".join(check.ratio_text for check in row.checks),
                "; ".join(check.target_text for check in row.targets),
                verdict,
            ]
        )
    lines += table(["figure", "CacheGate", "floor / peer", "ratio", "target", "met"], body)
    lines.append("")
    return lines
