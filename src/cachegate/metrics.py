"""Prometheus metrics: low-cardinality names and labels, every labelled series starting at zero.

Names default to the `cachegate_` prefix; `namespace="ai_agent"` keeps the original service's names
(`ai_agent_cache_hits_total{cache_layer=...}`) so its dashboards keep working. Tenant ids, keys and
text are never labels.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from cachegate.comparators import Outcome
from cachegate.rollout import Mode
from cachegate.vocabulary import BypassReason, CachePath, ComparisonKind, Layer, UncacheableReason

LAYERS = tuple(layer.value for layer in Layer)
"""Values of `cache_layer`: L1 result cache and L2 embedding cache, as in the original service."""
PATHS = tuple(path.value for path in CachePath)
"""`shared`: a single-flight waiter answered with its leader's fresh result (counted as a hit)."""
MODES = tuple(mode.value for mode in Mode)
OUTCOMES = tuple(outcome.value for outcome in Outcome)
COMPARISON_KINDS = tuple(kind.value for kind in ComparisonKind)
STORE_OPERATIONS = (
    "lookup",
    "generations",
    "write",
    "delete",
    "bump",
    "get_many",
    "set_many",
    "probe",
)
STORE_FAILURES = ("error", "timeout", "rejected", "refused")
BYPASS_REASONS = tuple(reason.value for reason in BypassReason)
ENCRYPTION_REJECTS = ("unknown_key", "invalid")
SINGLE_FLIGHT_OUTCOMES = ("shared", "timeout", "not_shared")
FLAG_SOURCES = ("live", "persisted", "bootstrap", "offline")
"""Values of `flag_state_source`'s `source` (see `cachegate.flags.Source`)."""
ROLLOUT_FLAGS = (
    "cachegate.l1.serve",
    "cachegate.l1.shadow",
    "cachegate.l2.serve",
    "cachegate.l2.shadow",
)
"""The flags whose rollout must be sticky on the tenant (`flag_stickiness_overrides`)."""
UNCACHEABLE_REASONS = tuple(reason.value for reason in UncacheableReason)
STREAM_HIT_SOURCES = ("store", "tee")
"""Where a streamed hit came from: sent from the store, or shared live from a leader."""
STREAM_SERVED = ("hit", "tee", "fresh")
"""Values of `served` on the time-to-first-byte histogram of streamed answers."""
TEE_OUTCOMES = ("complete", "fallback", "diverged")
"""What became of a follower of a live stream."""

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
_STORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
_SIZE_BUCKETS = tuple(float(2**n) for n in range(6, 24, 2))


class Metrics:
    """All CacheGate metrics, registered once in `registry` under `namespace`."""

    def __init__(
        self,
        *,
        namespace: str = "cachegate",
        registry: CollectorRegistry | None = REGISTRY,
        routes: Sequence[str] = (),
        invalidation_reasons: Sequence[str] = (),
    ) -> None:
        self.namespace = namespace
        self._registry = registry
        ns = namespace
        reg = registry
        self.hits = Counter(
            "cache_hits", "Cache hits.", ["cache_layer"], namespace=ns, registry=reg
        )
        self.misses = Counter(
            "cache_misses", "Cache misses.", ["cache_layer"], namespace=ns, registry=reg
        )
        self.shadow_lookups = Counter(
            "shadow_lookups",
            "Lookups in shadow mode (would-be hits and misses; nothing cached was served).",
            ["cache_layer", "result"],
            namespace=ns,
            registry=reg,
        )
        self.invalidations = Counter(
            "cache_invalidations",
            "Invalidations by reason.",
            ["reason"],
            namespace=ns,
            registry=reg,
        )
        self.invalidation_failures = Counter(
            "cache_invalidation_failures",
            "Invalidations the store did not acknowledge (retried in the background).",
            namespace=ns,
            registry=reg,
        )
        self.query_duration = Histogram(
            "query_duration_seconds",
            "Duration of cached-route requests, by cache path and route template.",
            ["route", "path"],
            namespace=ns,
            registry=reg,
            buckets=_LATENCY_BUCKETS,
        )
        self.bypasses = Counter(
            "bypasses",
            "Requests passed through uncached, by reason.",
            ["reason"],
            namespace=ns,
            registry=reg,
        )
        self.uncacheable = Counter(
            "uncacheable_responses",
            "Fresh responses not stored, by reason.",
            ["reason"],
            namespace=ns,
            registry=reg,
        )
        self.comparisons = Counter(
            "comparisons",
            "Shadow, verify and noise-baseline comparisons by outcome.",
            ["cache_layer", "kind", "outcome"],
            namespace=ns,
            registry=reg,
        )
        self.decisions = Counter(
            "decisions",
            "Per-request decisions by layer and mode.",
            ["cache_layer", "mode"],
            namespace=ns,
            registry=reg,
        )
        self.store_duration = Histogram(
            "store_operation_duration_seconds",
            "Latency of successful store calls by operation (failures: store_failures_total).",
            ["operation"],
            namespace=ns,
            registry=reg,
            buckets=_STORE_BUCKETS,
        )
        self.store_failures = Counter(
            "store_failures",
            "Store calls that failed: error, timeout, or rejected by the open breaker.",
            ["operation", "kind"],
            namespace=ns,
            registry=reg,
        )
        self.breaker_open = Gauge(
            "store_breaker_open",
            "1 while the store's circuit breaker is open or half-open, else 0.",
            namespace=ns,
            registry=reg,
            multiprocess_mode="livemax",
        )
        self.single_flight = Counter(
            "single_flight_waits",
            "Requests that waited on an identical computation, by outcome.",
            ["outcome"],
            namespace=ns,
            registry=reg,
        )
        self.entry_size = Histogram(
            "entry_size_bytes",
            "Size of stored entries.",
            ["cache_layer"],
            namespace=ns,
            registry=reg,
            buckets=_SIZE_BUCKETS,
        )
        self.corrupt_entries = Counter(
            "corrupt_entries",
            "Stored values that failed to decode (deleted and missed).",
            ["cache_layer"],
            namespace=ns,
            registry=reg,
        )
        self.calls_avoided = Counter(
            "fresh_calls_avoided",
            "Fresh computations (model or API calls) avoided by hits.",
            ["cache_layer"],
            namespace=ns,
            registry=reg,
        )
        self.tokens_avoided = Counter(
            "tokens_avoided",
            "Billed tokens avoided by hits.",
            ["cache_layer"],
            namespace=ns,
            registry=reg,
        )
        self.encrypted_rejected = Counter(
            "encrypted_values_rejected",
            "Encrypted values read as misses: under an unknown (retired) key, or not authentic.",
            ["reason"],
            namespace=ns,
            registry=reg,
        )
        self.cost_avoided = Counter(
            "cost_avoided_dollars",
            "Estimated money avoided by hits, in dollars.",
            ["cache_layer"],
            namespace=ns,
            registry=reg,
        )
        self.flag_state_source = Gauge(
            "flag_state_source",
            "1 for where the flag state in use came from: live, persisted, bootstrap, offline.",
            ["source"],
            namespace=ns,
            registry=reg,
            multiprocess_mode="livemax",
        )
        self.flag_state_fetched = Gauge(
            "flag_state_fetched_timestamp_seconds",
            "Unix time Unleash last confirmed the flag state in use (0: never); age = time() - it.",
            namespace=ns,
            registry=reg,
            multiprocess_mode="livemin",
        )
        self.flag_fetch_failures = Counter(
            "flag_fetch_failures",
            "Polls of the Unleash client that got no answer (unreachable, timeout, HTTP error).",
            namespace=ns,
            registry=reg,
        )
        self.flag_stickiness_overrides = Gauge(
            "flag_stickiness_overrides",
            "Rollout strategies of the flag state not sticky on the tenant (decided as if sticky).",
            ["flag"],
            namespace=ns,
            registry=reg,
            multiprocess_mode="livemax",
        )
        self.store_writes_refused = Gauge(
            "store_writes_refused",
            "1 while the store refuses writes (full, read-only): no hits are served, else 0.",
            namespace=ns,
            registry=reg,
            multiprocess_mode="livemax",
        )
        """Set by `RedisStore` on a refused write, cleared by the next write that succeeds."""
        self.store_noeviction = Gauge(
            "store_noeviction",
            "1 when Redis's maxmemory-policy is noeviction (a full Redis refuses writes).",
            namespace=ns,
            registry=reg,
            multiprocess_mode="livemax",
        )
        """Read once at start (`CONFIG GET`); stays 0 when CONFIG is refused (logged)."""
        self.store_epoch_changes = Counter(
            "store_epoch_changes",
            "Redis restarts and failovers seen (run_id or replication id changed).",
            namespace=ns,
            registry=reg,
        )
        """Each one turned every entry written before it into a miss."""
        self.invalidations_pending = Gauge(
            "invalidations_pending",
            "Invalidations not yet acknowledged by the store (retried; scopes bypass here).",
            namespace=ns,
            registry=reg,
            multiprocess_mode="livesum",
        )
        """Other processes may serve the pending scopes' old entries until they land."""
        self.invalidations_lost = Counter(
            "invalidations_lost",
            "Pending invalidations given up at shutdown (the store never took them).",
            namespace=ns,
            registry=reg,
        )
        """Their scopes' old entries may be served by other processes until their TTL."""
        self._add_stream_metrics()
        self._initialise(routes, invalidation_reasons)

    def _add_stream_metrics(self) -> None:
        """The series of streamed answers (SSE, chunked): hits, time to first byte, the tee."""
        ns, reg = self.namespace, self._registry
        self.stream_hits = Counter(
            "stream_hits",
            "Streamed answers served from the cache: sent from the store or shared live "
            "from an identical request's stream (tee).",
            ["source"],
            namespace=ns,
            registry=reg,
        )
        self.stream_first_byte = Histogram(
            "stream_first_byte_seconds",
            "Time from the request to the first body byte of a streamed answer, by how it was "
            "served: hit (sent from the store), tee (a leader's live stream), fresh.",
            ["served"],
            namespace=ns,
            registry=reg,
            buckets=_LATENCY_BUCKETS,
        )
        self.stream_followers = Counter(
            "stream_tee_followers",
            "Requests that followed a live stream, by outcome: complete, fallback (the leader "
            "failed; computed on their own) or diverged (their own answer differed; aborted).",
            ["outcome"],
            namespace=ns,
            registry=reg,
        )
        for source in STREAM_HIT_SOURCES:
            self.stream_hits.labels(source)
        for served in STREAM_SERVED:
            self.stream_first_byte.labels(served)
        for outcome in TEE_OUTCOMES:
            self.stream_followers.labels(outcome)

    def _initialise(self, routes: Iterable[str], reasons: Iterable[str]) -> None:
        """Create every known labelled series at zero, so rates and ratios exist from the start."""
        for layer in LAYERS:
            for counter in (
                self.hits,
                self.misses,
                self.corrupt_entries,
                self.calls_avoided,
                self.tokens_avoided,
                self.cost_avoided,
            ):
                counter.labels(layer)
            self.entry_size.labels(layer)
            for result in ("hit", "miss"):
                self.shadow_lookups.labels(layer, result)
            for mode in MODES:
                self.decisions.labels(layer, mode)
            for kind in COMPARISON_KINDS:
                for outcome in OUTCOMES:
                    self.comparisons.labels(layer, kind, outcome)
        for reason in BYPASS_REASONS:
            self.bypasses.labels(reason)
        for reason in UNCACHEABLE_REASONS:
            self.uncacheable.labels(reason)
        for operation in STORE_OPERATIONS:
            self.store_duration.labels(operation)
            for kind in STORE_FAILURES:
                self.store_failures.labels(operation, kind)
        for reason in ENCRYPTION_REJECTS:
            self.encrypted_rejected.labels(reason)
        for outcome in SINGLE_FLIGHT_OUTCOMES:
            self.single_flight.labels(outcome)
        for source in FLAG_SOURCES:
            self.flag_state_source.labels(source)
        for flag in ROLLOUT_FLAGS:
            self.flag_stickiness_overrides.labels(flag)
        self.initialise_routes(routes, reasons)
        self.breaker_open.set(0)
        self.store_writes_refused.set(0)
        self.store_noeviction.set(0)
        self.invalidations_pending.set(0)

    def initialise_routes(self, routes: Iterable[str], reasons: Iterable[str] = ()) -> None:
        """Create the per-route and per-invalidation-reason series at zero."""
        for route in routes:
            for path in PATHS:
                self.query_duration.labels(route, path)
        for reason in ("api", *reasons):
            self.invalidations.labels(reason)


class RouteMetrics:
    """The L1 series one cached route touches per request, bound once.

    `labels()` takes a lock and builds a tuple on every call; binding the children at start-up
    keeps the per-request cost of metrics to a few increments.
    """

    def __init__(self, metrics: Metrics, route: str) -> None:
        layer = LAYERS[0]
        self.metrics = metrics
        self.duration = {path: metrics.query_duration.labels(route, path) for path in PATHS}
        self.hits = metrics.hits.labels(layer)
        self.misses = metrics.misses.labels(layer)
        self.calls_avoided = metrics.calls_avoided.labels(layer)
        self.cost_avoided = metrics.cost_avoided.labels(layer)
        self.decisions = {
            (l1, l2): (metrics.decisions.labels(layer, l1), metrics.decisions.labels(LAYERS[1], l2))
            for l1 in MODES
            for l2 in MODES
        }
        self._bypasses = {reason: metrics.bypasses.labels(reason) for reason in BYPASS_REASONS}

    def bypass(self, reason: BypassReason) -> None:
        """Count one bypass."""
        child = self._bypasses.get(reason)
        if child is None:
            child = self._bypasses[reason] = self.metrics.bypasses.labels(reason)
        child.inc()

    def decided(self, l1: str, l2: str) -> None:
        """Count one request's decision for both layers."""
        first, second = self.decisions[l1, l2]
        first.inc()
        second.inc()


def exposition(registry: CollectorRegistry = REGISTRY) -> bytes:
    """The text a `/metrics` endpoint serves for `registry`.

    With `PROMETHEUS_MULTIPROC_DIR` set (several worker processes), the default registry is
    replaced by one that sums every worker's files, so any worker answers for all of them.
    """
    if registry is REGISTRY and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


_defaults: dict[str, Metrics] = {}


def default_metrics(namespace: str = "cachegate") -> Metrics:
    """The process-wide metrics of `namespace` in the default registry, created once."""
    metrics = _defaults.get(namespace)
    if metrics is None:
        metrics = _defaults[namespace] = Metrics(namespace=namespace)
    return metrics
