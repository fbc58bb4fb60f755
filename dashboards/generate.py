"""Generate CacheGate's Grafana dashboards as JSON, from code, so they stay reviewable and in sync.

`python dashboards/generate.py` rewrites `cachegate-overview.json` and `cachegate-rollout.json`
next to this file; `--check` exits non-zero when the checked-in files differ from what the code
generates; `--queries` prints every panel query, ready for the Prometheus HTTP API, one per line.

The dashboards import directly into Grafana (no `__inputs`): the data source is a variable, every
panel uses `${datasource}`. Queries lean on the recording rules in `alerts/cachegate.rules.yml`
(`cachegate:...`), which must be loaded into the same Prometheus. Ratios divide by a `> 0`
denominator and quantiles are filtered by `>= 0`, so no traffic shows as a gap, never as 0 or NaN.
Stdlib only: it runs before the package is installed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Json = dict[str, Any]

HERE = Path(__file__).resolve().parent
DEFAULT_NAMESPACE = "cachegate"
SCHEMA_VERSION = 39
DATASOURCE: Json = {"type": "prometheus", "uid": "${datasource}"}
JOB = 'job=~"$job"'
ROUTE = 'route=~"$route"'
GRID_WIDTH = 24

GRAFANA_DEFAULTS: Mapping[str, str] = {
    "$__rate_interval": "5m",
    "$__range": "1h",
    "$job": ".+",
    "$route": ".+",
}
"""What `concrete()` puts in place of each Grafana variable (longest names are replaced first)."""


@dataclass(frozen=True)
class Target:
    """One query of a panel; `instant` for stat panels that show a single current value."""

    expr: str
    legend: str = ""
    instant: bool = False


@dataclass(frozen=True)
class Panel:
    """A panel: what it shows, the question it answers (`description`), and how to draw it."""

    title: str
    description: str
    targets: Sequence[Target]
    unit: str = "short"
    kind: str = "timeseries"
    width: int = 12
    height: int = 8
    min: float | None = None
    max: float | None = None
    stack: bool = False
    log_scale: bool = False
    thresholds: Sequence[tuple[float, str]] = ()
    mappings: Sequence[Json] = ()
    right_axis_refs: Sequence[str] = ()


@dataclass(frozen=True)
class Row:
    """A collapsible-free row header grouping the panels that follow it."""

    title: str
    panels: Sequence[Panel] = field(default_factory=tuple)


@dataclass(frozen=True)
class Dashboard:
    """A whole dashboard: identity, rows and the variables it needs."""

    uid: str
    title: str
    description: str
    rows: Sequence[Row]
    with_route: bool = False


class Queries:
    """PromQL building blocks for one metric namespace (raw metrics carry its prefix)."""

    def __init__(self, namespace: str = DEFAULT_NAMESPACE) -> None:
        self.namespace = namespace

    def metric(self, name: str) -> str:
        """The exposed name of a CacheGate metric, e.g. `cachegate_cache_hits_total`."""
        return f"{self.namespace}_{name}"

    def rate(self, name: str, by: str, matchers: str = JOB) -> str:
        """`sum by (by) (rate(metric{matchers}[$__rate_interval]))`."""
        return f"sum by ({by}) (rate({self.metric(name)}{{{matchers}}}[$__rate_interval]))"

    def increase(self, name: str, by: str, matchers: str = JOB) -> str:
        """The increase over the dashboard's time range, summed by `by`."""
        return f"sum by ({by}) (increase({self.metric(name)}{{{matchers}}}[$__range]))"


def ratio(numerator: str, denominator: str) -> str:
    """`numerator / (denominator > 0)`: no sample instead of a division by zero."""
    return f"{numerator} / ({denominator} > 0)"


def quantile(q: float, by: str, buckets: str) -> str:
    """`histogram_quantile` over `sum by (by, le)`, dropping the NaN of an empty histogram."""
    return f"histogram_quantile({q}, sum by ({by}, le) ({buckets})) >= 0"


def latency_targets(by: str, quantiles: Sequence[float]) -> list[Target]:
    """Request latency quantiles of the cached routes by `by`, from the recorded bucket rates."""
    buckets = f"cachegate:query_duration_seconds_bucket:rate5m{{{JOB}, {ROUTE}}}"
    return [Target(quantile(q, by, buckets), f"{{{{{by}}}}} p{round(q * 100)}") for q in quantiles]


def hit_ratio(window: str, instant: bool = False) -> Target:
    """Serve-mode hit ratio by layer over the selected jobs, from recorded rates."""
    return Target(
        ratio(
            f"sum by (cache_layer) (cachegate:hits:{window}{{{JOB}}})",
            f"sum by (cache_layer) (cachegate:lookups:{window}{{{JOB}}})",
        ),
        "{{cache_layer}}" if instant else "{{cache_layer}} served",
        instant,
    )


def shadow_hit_ratio(window: str, instant: bool = False) -> Target:
    """Would-be hit ratio by layer during the dark launch, from recorded shadow lookup rates."""
    return Target(
        ratio(
            f'sum by (cache_layer) (cachegate:shadow_lookups:{window}{{{JOB}, result="hit"}})',
            f"sum by (cache_layer) (cachegate:shadow_lookups:{window}{{{JOB}}})",
        ),
        "{{cache_layer}}" if instant else "{{cache_layer}} would-be (shadow)",
        instant,
    )


def rollout_share() -> Target:
    """Share of requests per layer in each mode, over the selected jobs, from recorded rates."""
    decisions = f"cachegate:decisions:rate5m{{{JOB}}}"
    return Target(
        f"sum by (cache_layer, mode) ({decisions}) / on (cache_layer) group_left () "
        f"(sum by (cache_layer) ({decisions}) > 0)",
        "{{cache_layer}} {{mode}}",
    )


def overview(q: Queries) -> Dashboard:
    """Day-to-day operation: is the cache paying off, is it fast, is the store healthy."""
    effectiveness = Row(
        "Is the cache paying off?",
        (
            Panel(
                "Hit rate by layer (last hour)",
                "What share of serve-mode lookups did each layer answer from the cache over the "
                "last hour? The original plan expects more than 30% (alert "
                "CacheGateLowCacheHitRate). Empty while a layer is not serving.",
                (hit_ratio("rate1h", instant=True),),
                unit="percentunit",
                kind="stat",
                width=6,
                min=0,
                max=1,
                thresholds=((0, "red"), (0.3, "green")),
            ),
            Panel(
                "Money avoided (time range)",
                "How many dollars did cache hits save over the selected time range? Per-route "
                "cost estimates come from the configuration (the original estimates were "
                "$0.017 per query and $0.002 per embedding call).",
                (
                    Target(
                        q.increase("cost_avoided_dollars_total", "cache_layer"),
                        "{{cache_layer}}",
                        instant=True,
                    ),
                ),
                unit="currencyUSD",
                kind="stat",
                width=6,
            ),
            Panel(
                "Fresh calls avoided (time range)",
                "How many model or API calls did cache hits make unnecessary over the selected "
                "time range, per layer?",
                (
                    Target(
                        q.increase("fresh_calls_avoided_total", "cache_layer"),
                        "{{cache_layer}}",
                        instant=True,
                    ),
                ),
                kind="stat",
                width=6,
            ),
            Panel(
                "Tokens avoided (time range)",
                "How many billed tokens did cache hits avoid over the selected time range?",
                (
                    Target(
                        q.increase("tokens_avoided_total", "cache_layer"),
                        "{{cache_layer}}",
                        instant=True,
                    ),
                ),
                kind="stat",
                width=6,
            ),
            Panel(
                "Hit rate by layer",
                "How often does each layer answer from the cache, over 5-minute windows? Served "
                "hit rate (serve mode) next to the would-be hit rate of layers in shadow mode. "
                "Gaps mean no lookups, not a 0% hit rate.",
                (hit_ratio("rate5m"), shadow_hit_ratio("rate5m")),
                unit="percentunit",
                min=0,
                max=1,
                thresholds=((0, "red"), (0.3, "green")),
            ),
            Panel(
                "Money avoided per hour",
                "How fast are cache hits saving money right now, in dollars per hour, per layer?",
                (
                    Target(
                        f"{q.rate('cost_avoided_dollars_total', 'cache_layer')} * 3600",
                        "{{cache_layer}}",
                    ),
                ),
                unit="currencyUSD",
                min=0,
            ),
            Panel(
                "Calls and tokens avoided",
                "How many fresh computations (left axis) and billed tokens (right axis) per "
                "second are hits avoiding, per layer?",
                (
                    Target(
                        q.rate("fresh_calls_avoided_total", "cache_layer"), "{{cache_layer}} calls"
                    ),
                    Target(q.rate("tokens_avoided_total", "cache_layer"), "{{cache_layer}} tokens"),
                ),
                unit="ops",
                min=0,
                right_axis_refs=("B",),
            ),
            Panel(
                "Rollout share by layer and mode",
                "What share of requests did each layer actually handle in off, shadow and serve "
                "mode (the rollout as applied, not as configured)?",
                (rollout_share(),),
                unit="percentunit",
                min=0,
                max=1,
            ),
        ),
    )
    latency = Row(
        "Is it fast?",
        (
            Panel(
                "Latency p50 / p95 / p99 by path",
                "How long do requests on the cached routes take, by cache path (hit, shared, "
                "miss, shadow, bypass)? A hit should take milliseconds (alert "
                "CacheGateHitLatencyHigh at p95 > 50 ms, hits only); shared: a single-flight "
                "waiter given its leader's fresh result; a miss costs the full fresh "
                "computation. Log scale.",
                latency_targets("path", (0.5, 0.95, 0.99)),
                unit="s",
                log_scale=True,
                width=16,
            ),
            Panel(
                "Requests by path",
                "How many requests per second take each cache path? Shows where traffic goes "
                "as the rollout advances.",
                (
                    Target(
                        f"sum by (path) (cachegate:query_duration_seconds_count:rate5m{{{JOB}, "
                        f"{ROUTE}}})",
                        "{{path}}",
                    ),
                ),
                unit="reqps",
                width=8,
                min=0,
                stack=True,
            ),
            Panel(
                "Single-flight waits by outcome",
                "How many requests waited for an identical computation already running, and did "
                "they get its result (shared), give up (timeout) or compute themselves?",
                (Target(q.rate("single_flight_waits_total", "outcome"), "{{outcome}}"),),
                unit="reqps",
                min=0,
            ),
            Panel(
                "Stored entry size p50 / p95 by layer",
                "How big are the entries written to the store? Drives store memory (the "
                "original plan assumed about 3 KB per embedding).",
                [
                    Target(
                        quantile(
                            qq,
                            "cache_layer",
                            f"rate({q.metric('entry_size_bytes_bucket')}{{{JOB}}}"
                            "[$__rate_interval])",
                        ),
                        f"{{{{cache_layer}}}} p{round(qq * 100)}",
                    )
                    for qq in (0.5, 0.95)
                ],
                unit="bytes",
            ),
        ),
    )
    store = Row(
        "Is the store healthy?",
        (
            Panel(
                "Store errors, timeouts and rejections",
                "How many store calls per second fail, by kind: error, timeout, or rejected "
                "while the circuit breaker is open? Failures are misses; requests take the "
                "fresh path.",
                (Target(f"sum by (kind) (cachegate:store_failures:rate5m{{{JOB}}})", "{{kind}}"),),
                unit="ops",
                width=8,
                min=0,
            ),
            Panel(
                "Store failure ratio",
                "What share of the store calls CacheGate wanted to make failed, per kind? Alert "
                "CacheGateStoreFailures fires above 5% errors or timeouts.",
                (Target(f"cachegate:store_failure_ratio:rate5m{{{JOB}}}", "{{job}} {{kind}}"),),
                unit="percentunit",
                width=8,
                min=0,
                thresholds=((0, "green"), (0.05, "red")),
            ),
            Panel(
                "Circuit breaker",
                "Is the store's circuit breaker open (or half-open), so that nothing is looked "
                "up or stored? Alert CacheGateStoreBreakerOpen.",
                (Target(f"max by (job) ({q.metric('store_breaker_open')}{{{JOB}}})", "{{job}}"),),
                kind="state-timeline",
                width=8,
                mappings=(
                    {
                        "type": "value",
                        "options": {
                            "0": {"text": "closed", "color": "green", "index": 0},
                            "1": {"text": "open", "color": "red", "index": 1},
                        },
                    },
                ),
            ),
            Panel(
                "Store latency p99 by operation",
                "How long do successful store calls take, per operation? A lookup is one round "
                "trip and should stay far below the store deadline.",
                (
                    Target(
                        quantile(
                            0.99,
                            "operation",
                            f"rate({q.metric('store_operation_duration_seconds_bucket')}"
                            f"{{{JOB}}}[$__rate_interval])",
                        ),
                        "{{operation}}",
                    ),
                ),
                unit="s",
            ),
            Panel(
                "Corrupt entries",
                "How many stored values failed to decode (deleted and treated as a miss)? "
                "Anything but zero points at a codec or version mismatch between deployments.",
                (Target(q.rate("corrupt_entries_total", "cache_layer"), "{{cache_layer}}"),),
                unit="ops",
                min=0,
            ),
        ),
    )
    flow = Row(
        "What is invalidated or bypassed?",
        (
            Panel(
                "Invalidations by reason",
                "How often do writes (session notes created, updated, deleted) invalidate "
                "cached answers, by reason? Unacknowledged invalidations are retried in the "
                "background and must stay near zero.",
                (
                    Target(q.rate("cache_invalidations_total", "reason"), "{{reason}}"),
                    Target(
                        f"sum (rate({q.metric('cache_invalidation_failures_total')}{{{JOB}}}"
                        "[$__rate_interval]))",
                        "unacknowledged",
                    ),
                ),
                unit="ops",
                width=8,
                min=0,
            ),
            Panel(
                "Bypasses by reason",
                "Why are requests on cached routes passed through uncached (no tenant, body too "
                "large, no-cache request, layer off, store error...)?",
                (Target(q.rate("bypasses_total", "reason"), "{{reason}}"),),
                unit="reqps",
                width=8,
                min=0,
                stack=True,
            ),
            Panel(
                "Uncacheable responses by reason",
                "Why were fresh responses not stored (error status, Set-Cookie, Cache-Control, "
                "streamed, too large)? A high rate here caps the hit rate.",
                (Target(q.rate("uncacheable_responses_total", "reason"), "{{reason}}"),),
                unit="ops",
                width=8,
                min=0,
                stack=True,
            ),
            Panel(
                "Freshness conditions",
                "Do the conditions of the freshness promise hold? Redis refusing writes (no "
                "hits served), invalidations not acknowledged (other processes may serve "
                "pre-write answers), lost at shutdown, and Redis restarts or failovers (older "
                "entries miss). Alerts in the cachegate-freshness group.",
                (
                    Target(
                        f"max by (job) ({q.metric('store_writes_refused')}{{{JOB}}})",
                        "writes refused {{job}}",
                    ),
                    Target(
                        f"sum by (job) ({q.metric('invalidations_pending')}{{{JOB}}})",
                        "invalidations pending {{job}}",
                    ),
                    Target(
                        f"sum by (job) (increase({q.metric('invalidations_lost_total')}"
                        f"{{{JOB}}}[$__rate_interval]))",
                        "invalidations lost {{job}}",
                    ),
                    Target(
                        f"sum by (job) (increase({q.metric('store_epoch_changes_total')}"
                        f"{{{JOB}}}[$__rate_interval]))",
                        "Redis restarts/failovers {{job}}",
                    ),
                ),
                width=24,
                min=0,
            ),
        ),
    )
    return Dashboard(
        uid="cachegate-overview",
        title="CacheGate / Overview",
        description="CacheGate in operation: hit rate, money avoided, latency by cache path, "
        "store health, invalidations and bypasses.",
        rows=(effectiveness, latency, store, flow, streams(q)),
        with_route=True,
    )


def streams(q: Queries) -> Row:
    """Streamed answers (SSE, chunked): hits by source, time to first byte, what is not stored."""
    first_byte = f"rate({q.metric('stream_first_byte_seconds_bucket')}{{{JOB}}}[$__rate_interval])"
    not_stored = f'{JOB}, reason=~"stream_.+"'
    return Row(
        "How are streamed answers served?",
        (
            Panel(
                "Streamed hits by source",
                "How many streamed answers came from the cache: replayed from the store, or "
                "shared live from an identical request's stream (tee)?",
                (Target(q.rate("stream_hits_total", "source"), "{{source}}"),),
                unit="reqps",
                width=6,
                min=0,
                stack=True,
            ),
            Panel(
                "Time to first byte of streamed answers",
                "How long until the first byte of a streamed answer reached the client, for a "
                "hit (replayed), a tee follower and a fresh stream? Hits should start in "
                "milliseconds; fresh streams wait for the model's first token.",
                [
                    Target(quantile(p, "served", first_byte), f"{{{{served}}}} p{round(p * 100)}")
                    for p in (0.5, 0.95)
                ],
                unit="s",
                width=6,
                log_scale=True,
            ),
            Panel(
                "Streams not stored by reason",
                "Why were fresh streams not stored: the client left, the app raised, the app "
                "left it unfinished, no terminal event, too large? Only a normally completed "
                "stream is cached (alert CacheGateStreamsNotStored).",
                (
                    Target(
                        q.rate("uncacheable_responses_total", "reason", not_stored), "{{reason}}"
                    ),
                ),
                unit="ops",
                width=6,
                min=0,
                stack=True,
            ),
            Panel(
                "Live tee followers by outcome",
                "What became of requests that followed a live stream: complete, fallback (the "
                "leader failed and they computed on their own) or diverged (their own answer "
                "differed from what they had relayed, and they were aborted)?",
                (Target(q.rate("stream_tee_followers_total", "outcome"), "{{outcome}}"),),
                unit="reqps",
                width=6,
                min=0,
                stack=True,
            ),
        ),
    )


def flag_state_row(q: Queries) -> Row:
    """Where the flags came from, how old they are, whether Unleash answers, and stickiness."""
    return Row(
        "Flags: live, fresh and sticky?",
        (
            Panel(
                "Instances by flag source",
                "Where does each instance's flag state come from? live: fetched from Unleash; "
                "persisted: read back at start from the state file, Unleash not reached yet; "
                "bootstrap: the bootstrap stage (off unless chosen); offline: no Unleash "
                "configured. Alert CacheGateFlagStateNotLive fires after 5 minutes on persisted "
                "or bootstrap flags.",
                (
                    Target(
                        f"sum by (source) ({q.metric('flag_state_source')}{{{JOB}}})",
                        "{{source}}",
                    ),
                ),
                width=8,
                min=0,
                stack=True,
            ),
            Panel(
                "Flag state age",
                "How long ago did Unleash last confirm the flag state (oldest instance)? It "
                "grows while Unleash does not answer: a change, the kill switch included, does "
                "not reach the service. Alert CacheGateFlagStateStale at 5 minutes.",
                (Target(f"cachegate:flag_state_age_seconds{{{JOB}}}", "{{job}}"),),
                unit="s",
                width=8,
                min=0,
                thresholds=((0, "green"), (300, "red")),
            ),
            Panel(
                "Unleash polls without answer, and non-sticky rollouts",
                "How many polls per second got no answer from Unleash (the log has one warning "
                "when it stops answering and one when it answers again)? And how many serve or "
                "shadow rollout strategies are not sticky on workspaceId (decided as if they "
                "were; alert CacheGateFlagStickinessOverridden)?",
                (
                    Target(q.rate("flag_fetch_failures_total", "job"), "failed polls {{job}}"),
                    Target(
                        f"max by (flag) ({q.metric('flag_stickiness_overrides')}{{{JOB}}})",
                        "not sticky {{flag}}",
                    ),
                ),
                width=8,
                min=0,
            ),
        ),
    )


def rollout(q: Queries) -> Dashboard:
    """The rollout's stage gates: share per mode, would-be hit rate, agreement, latency, cost."""
    agreement = ratio(
        f'sum by (cache_layer, kind) (cachegate:comparisons:rate5m{{{JOB}, outcome="match"}})',
        "sum by (cache_layer, kind) "
        f'(cachegate:comparisons:rate5m{{{JOB}, outcome=~"match|mismatch"}})',
    )
    stage = Row(
        "Where is the rollout?",
        (
            Panel(
                "Rollout share by layer and mode",
                "What share of requests did each layer handle in off, shadow and serve mode? "
                "This is the rollout actually applied (flags, stickiness, kill switch), to hold "
                "against the plan: dark launch, L2 at 100%, then L1 at 10%, 50%, 100%.",
                (rollout_share(),),
                unit="percentunit",
                width=16,
                min=0,
                max=1,
            ),
            Panel(
                "Decisions per second",
                "How many requests per second were decided, per layer and mode? Tells whether "
                "the shares on the left rest on enough traffic to mean anything.",
                (
                    Target(
                        f"sum by (cache_layer, mode) (cachegate:decisions:rate5m{{{JOB}}})",
                        "{{cache_layer}} {{mode}}",
                    ),
                ),
                unit="reqps",
                width=8,
                min=0,
            ),
        ),
    )
    dark = Row(
        "Dark launch: would it work, would it be right?",
        (
            Panel(
                "Would-be hit rate (last hour)",
                "What share of shadow lookups would have been hits over the last hour? The dark "
                "launch's success criterion is more than 30%.",
                (shadow_hit_ratio("rate1h", instant=True),),
                unit="percentunit",
                kind="stat",
                width=8,
                min=0,
                max=1,
                thresholds=((0, "red"), (0.3, "green")),
            ),
            Panel(
                "Would-be hit rate during dark launch",
                "How often would a layer in shadow mode have answered from the cache, over "
                "5-minute windows? Nothing cached is served in shadow mode.",
                (shadow_hit_ratio("rate5m"),),
                unit="percentunit",
                width=16,
                min=0,
                max=1,
                thresholds=((0, "red"), (0.3, "green")),
            ),
            Panel(
                "Shadow and verify agreement",
                "How often does the cached answer match a fresh one? shadow: would-be hits in "
                "dark launch; verify: served hits re-checked in the background; noise: two fresh "
                "answers compared, the baseline that nondeterminism alone gives. Alerts "
                "CacheGateShadowMismatchRateHigh and CacheGateVerifyMismatchRateHigh fire when "
                "agreement drops below 95%.",
                (Target(agreement, "{{cache_layer}} {{kind}}"),),
                unit="percentunit",
                width=16,
                max=1,
                thresholds=((0, "red"), (0.95, "green")),
            ),
            Panel(
                "Comparisons by outcome",
                "How many shadow, verify and noise comparisons per second end in match, "
                "mismatch or error (the fresh side failed, nothing compared)? Low volume makes "
                "the agreement panel noisy.",
                (
                    Target(
                        f"sum by (kind, outcome) (cachegate:comparisons:rate5m{{{JOB}}})",
                        "{{kind}} {{outcome}}",
                    ),
                ),
                unit="ops",
                width=8,
                min=0,
            ),
        ),
    )
    serve = Row(
        "Serving: is it faster and cheaper?",
        (
            Panel(
                "Served vs would-be hit rate",
                "Does the served hit rate match what the dark launch predicted, per layer?",
                (hit_ratio("rate5m"), shadow_hit_ratio("rate5m")),
                unit="percentunit",
                width=8,
                min=0,
                max=1,
            ),
            Panel(
                "Latency p95 by path",
                "How does p95 latency compare between hits, shared results (single-flight "
                "waiters), misses, shadow and bypassed requests? The plan's L1 criterion is p95 "
                "down more than 40% in total.",
                latency_targets("path", (0.95,)),
                unit="s",
                width=8,
                log_scale=True,
            ),
            Panel(
                "Money avoided per hour",
                "How many dollars per hour are hits saving, per layer? The plan's criterion is "
                "cost down more than 50% in total.",
                (
                    Target(
                        f"{q.rate('cost_avoided_dollars_total', 'cache_layer')} * 3600",
                        "{{cache_layer}}",
                    ),
                ),
                unit="currencyUSD",
                width=8,
                min=0,
            ),
        ),
    )
    return Dashboard(
        uid="cachegate-rollout",
        title="CacheGate / Rollout",
        description="CacheGate's rollout stage gates: rollout share per mode, would-be hit rate "
        "in dark launch, shadow and verify agreement, latency and money avoided.",
        rows=(stage, autopilot(q), dark, serve, flag_state_row(q)),
        with_route=True,
    )


AUTOPILOT_STAGES = ("off", "dark-launch", "l2", "l1-10", "l1-50", "l1-100")
"""The plan's stages by position, as `cachegate_autopilot_stage` reports them."""

AUTOPILOT_TRACKS = (
    ("l2", ("off", "shadow", "serve"), ("blue", "purple", "green")),
    (
        "l1",
        ("off", "shadow", "l1-10", "l1-50", "l1-100"),
        ("blue", "purple", "orange", "orange", "green"),
    ),
)
"""The shipped track plan's tracks and their states by position, as
`cachegate_autopilot_track_state` reports them (flags/rollout-tracks.toml)."""


def _track_panel(
    q: Queries, track: str, states: tuple[str, ...], colours: tuple[str, ...]
) -> Panel:
    names = {
        str(position): {"text": name, "color": colour, "index": position + 1}
        for position, (name, colour) in enumerate(zip(states, colours, strict=True))
    }
    names["-1"] = {"text": "kill switch / unknown", "color": "red", "index": 0}
    return Panel(
        f"Autopilot {track.upper()} track over time",
        f"With a track plan: which state did the autopilot hold the {track.upper()} flags at? "
        "Each layer advances and rolls back on its own gates; the kill switch shows on both. "
        "Empty with a plan of whole stages.",
        (
            Target(
                f'max by (job) ({q.metric("autopilot_track_state")}{{{JOB},track="{track}"}})',
                "{{job}}",
            ),
        ),
        kind="state-timeline",
        width=8,
        mappings=({"type": "value", "options": names},),
    )


def autopilot(q: Queries) -> Row:
    """The rollout autopilot (`cachegate rollout run --metrics-port`): stage over time, its
    last decisions and the gates' verdicts; with a track plan, each track over time and its
    decisions."""
    colours = ("blue", "purple", "yellow", "orange", "orange", "green")
    stage_names = {
        str(position): {"text": name, "color": colour, "index": position + 1}
        for position, (name, colour) in enumerate(zip(AUTOPILOT_STAGES, colours, strict=True))
    }
    stage_names["-1"] = {"text": "kill switch / unknown", "color": "red", "index": 0}
    return Row(
        "Autopilot: where is it going, and why?",
        (
            Panel(
                "Autopilot stage over time",
                "Which stage did the autopilot hold the flags at, over time? A step down is a "
                "rollback (alert CacheGateAutopilotRolledBack); a long flat line while gates "
                "hold is CacheGateAutopilotHoldingTooLong. Empty when the autopilot is not run "
                "with --metrics-port.",
                (Target(f"max by (job) ({q.metric('autopilot_stage')}{{{JOB}}})", "{{job}}"),),
                kind="state-timeline",
                width=12,
                mappings=({"type": "value", "options": stage_names},),
            ),
            Panel(
                "Last autopilot decisions",
                "What did the autopilot decide over the shown range, by action (advance, hold, "
                "rollback, complete) and reason code? `cachegate rollout status` prints the "
                "figures behind the latest one.",
                (
                    Target(
                        f"sum by (action, reason) "
                        f"(increase({q.metric('autopilot_decisions_total')}{{{JOB}}}[$__range]))"
                        " > 0",
                        "{{action}} {{reason}}",
                        instant=True,
                    ),
                ),
                kind="stat",
                width=6,
                min=0,
            ),
            Panel(
                "Gate verdicts",
                "The last verdict of every gate of the current stage: 1 pass, 0 hold (no data, "
                "too small a sample, undecided), -1 fail.",
                (
                    Target(
                        f"max by (gate) ({q.metric('autopilot_gate_verdict')}{{{JOB}}})",
                        "{{gate}}",
                    ),
                ),
                kind="state-timeline",
                width=6,
                mappings=(
                    {
                        "type": "value",
                        "options": {
                            "-1": {"text": "fail", "color": "red", "index": 0},
                            "0": {"text": "hold", "color": "yellow", "index": 1},
                            "1": {"text": "pass", "color": "green", "index": 2},
                        },
                    },
                ),
            ),
            *(_track_panel(q, *track) for track in AUTOPILOT_TRACKS),
            Panel(
                "Last track decisions",
                "With a track plan: what did the autopilot decide per track over the shown "
                "range, by action and reason code? One track can roll back while the other "
                "advances.",
                (
                    Target(
                        f"sum by (track, action, reason) "
                        f"(increase({q.metric('autopilot_track_decisions_total')}{{{JOB}}}"
                        "[$__range])) > 0",
                        "{{track}} {{action}} {{reason}}",
                        instant=True,
                    ),
                ),
                kind="stat",
                width=8,
                min=0,
            ),
        ),
    )


def render_target(target: Target, ref: str) -> Json:
    """A Prometheus target in Grafana's JSON form."""
    return {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": target.expr,
        "instant": target.instant,
        "legendFormat": target.legend or "__auto",
        "range": not target.instant,
        "refId": ref,
    }


def field_config(panel: Panel) -> Json:
    """Units, bounds, thresholds and per-kind drawing options of a panel."""
    steps: list[Json] = [
        {"color": color, "value": None if index == 0 else value}
        for index, (value, color) in enumerate(panel.thresholds or ((0, "green"),))
    ]
    defaults: Json = {
        "unit": panel.unit,
        "thresholds": {"mode": "absolute", "steps": steps},
        "color": {"mode": "thresholds" if panel.kind == "stat" else "palette-classic"},
        "mappings": list(panel.mappings),
    }
    if panel.min is not None:
        defaults["min"] = panel.min
    if panel.max is not None:
        defaults["max"] = panel.max
    if panel.kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 20 if panel.stack else 0,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if panel.stack else "none", "group": "A"},
            "scaleDistribution": {"type": "log", "log": 10}
            if panel.log_scale
            else {"type": "linear"},
            "thresholdsStyle": {"mode": "dashed" if panel.thresholds else "off"},
        }
    elif panel.kind == "state-timeline":
        defaults["color"] = {"mode": "fixed", "fixedColor": "green"}
        defaults["custom"] = {"fillOpacity": 80, "lineWidth": 0}
    overrides = [
        {
            "matcher": {"id": "byFrameRefID", "options": ref},
            "properties": [
                {"id": "custom.axisPlacement", "value": "right"},
                {"id": "unit", "value": "short"},
            ],
        }
        for ref in panel.right_axis_refs
    ]
    return {"defaults": defaults, "overrides": overrides}


def panel_options(panel: Panel) -> Json:
    """Display options per panel kind: legend as a table with the last and max values."""
    if panel.kind == "stat":
        return {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "none",
            "textMode": "value_and_name",
            "orientation": "auto",
            "justifyMode": "auto",
        }
    legend = {
        "displayMode": "table",
        "placement": "bottom",
        "showLegend": True,
        "calcs": ["lastNotNull", "max"],
    }
    if panel.kind == "state-timeline":
        return {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "mergeValues": True,
            "showValue": "auto",
            "rowHeight": 0.9,
            "tooltip": {"mode": "single", "sort": "none"},
        }
    return {"legend": legend, "tooltip": {"mode": "multi", "sort": "desc"}}


class Layout:
    """Places panels left to right on Grafana's 24-column grid, wrapping into new lines."""

    def __init__(self) -> None:
        self.x = 0
        self.y = 0
        self.line_height = 0
        self.next_id = 1

    def place(self, width: int, height: int) -> tuple[int, Json]:
        """The next panel id and its `gridPos`."""
        if self.x + width > GRID_WIDTH:
            self.newline()
        pos = {"h": height, "w": width, "x": self.x, "y": self.y}
        self.x += width
        self.line_height = max(self.line_height, height)
        panel_id = self.next_id
        self.next_id += 1
        return panel_id, pos

    def newline(self) -> None:
        """Start a new line below the tallest panel of the current one."""
        self.y += self.line_height
        self.x = 0
        self.line_height = 0


def render_panel(panel: Panel, layout: Layout) -> Json:
    """A panel in Grafana's JSON form, placed by `layout`."""
    panel_id, pos = layout.place(panel.width, panel.height)
    refs = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": pos,
        "targets": [render_target(t, refs[i]) for i, t in enumerate(panel.targets)],
        "fieldConfig": field_config(panel),
        "options": panel_options(panel),
    }


def variables(q: Queries, with_route: bool) -> list[Json]:
    """The data source, job and (optionally) route template variables."""

    def query_variable(name: str, label: str, query: str) -> Json:
        return {
            "type": "query",
            "name": name,
            "label": label,
            "datasource": DATASOURCE,
            "definition": query,
            "query": {
                "query": query,
                "refId": "PrometheusVariableQueryEditor-VariableQuery",
                "qryType": 1,
            },
            "refresh": 2,
            "sort": 1,
            "multi": True,
            "includeAll": True,
            "allValue": ".+",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "hide": 0,
            "options": [],
            "regex": "",
        }

    result: list[Json] = [
        {
            "type": "datasource",
            "name": "datasource",
            "label": "Data source",
            "query": "prometheus",
            "current": {},
            "hide": 0,
            "includeAll": False,
            "multi": False,
            "options": [],
            "refresh": 1,
            "regex": "",
        },
        query_variable("job", "Job", f"label_values({q.metric('decisions_total')}, job)"),
    ]
    if with_route:
        result.append(
            query_variable(
                "route",
                "Route",
                f"label_values({q.metric('query_duration_seconds_count')}{{{JOB}}}, route)",
            )
        )
    return result


def render(dashboard: Dashboard, q: Queries) -> Json:
    """A dashboard in Grafana's JSON model, importable as is."""
    layout = Layout()
    panels: list[Json] = []
    for row in dashboard.rows:
        layout.newline()
        row_id, pos = layout.place(GRID_WIDTH, 1)
        panels.append(
            {
                "id": row_id,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": pos,
                "panels": [],
            }
        )
        layout.newline()
        panels.extend(render_panel(panel, layout) for panel in row.panels)
    return {
        "uid": dashboard.uid,
        "title": dashboard.title,
        "description": dashboard.description,
        "tags": ["cachegate"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": "1m",
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "links": [
            {
                "type": "dashboards",
                "title": "CacheGate",
                "tags": ["cachegate"],
                "asDropdown": False,
                "includeVars": True,
                "keepTime": True,
                "targetBlank": False,
                "icon": "external link",
                "tooltip": "",
                "url": "",
            }
        ],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "templating": {"list": variables(q, dashboard.with_route)},
        "panels": panels,
    }


def dashboards(namespace: str = DEFAULT_NAMESPACE) -> dict[str, Json]:
    """Every dashboard by file name, for metrics exposed under `namespace`."""
    q = Queries(namespace)
    return {
        "cachegate-overview.json": render(overview(q), q),
        "cachegate-rollout.json": render(rollout(q), q),
    }


def iter_queries(dashboard: Mapping[str, Any]) -> Iterator[str]:
    """Every PromQL expression of a dashboard's panels (as in Grafana, with its variables)."""
    for panel in dashboard.get("panels", []):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield str(target["expr"])
        yield from iter_queries(panel)


def concrete(expr: str, values: Mapping[str, str] = GRAFANA_DEFAULTS) -> str:
    """`expr` with Grafana's variables replaced, so Prometheus itself can run it."""
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(name, values[name])
    return expr


def panel_queries(
    namespace: str = DEFAULT_NAMESPACE, values: Mapping[str, str] = GRAFANA_DEFAULTS
) -> list[str]:
    """Every distinct panel query of all dashboards, variables replaced, runnable by Prometheus."""
    queries = (
        concrete(expr, values)
        for dashboard in dashboards(namespace).values()
        for expr in iter_queries(dashboard)
    )
    return list(dict.fromkeys(queries))


def dump(dashboard: Json) -> str:
    """The checked-in text of a dashboard: stable key order, two-space indent, final newline."""
    return json.dumps(dashboard, indent=2, sort_keys=True) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Write, check or list the dashboards; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    action = parser.add_mutually_exclusive_group()
    action.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if the files on disk differ from the generated ones",
    )
    action.add_argument(
        "--queries",
        action="store_true",
        help="print every panel query with Grafana variables replaced",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=HERE,
        help="where the JSON files live (default: next to this script)",
    )
    parser.add_argument(
        "--metric-namespace",
        default=DEFAULT_NAMESPACE,
        help="the metrics' namespace option (e.g. ai_agent); default cachegate",
    )
    args = parser.parse_args(argv)

    if args.queries:
        print("\n".join(panel_queries(args.metric_namespace)))
        return 0
    stale: list[str] = []
    for name, dashboard in dashboards(args.metric_namespace).items():
        path: Path = args.output_dir / name
        text = dump(dashboard)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print(
            "out of date, run `python dashboards/generate.py`: " + ", ".join(stale), file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
