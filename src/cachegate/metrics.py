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
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from cachegate.comparators import Outcome
from cachegate.flag_metrics import FLAG_SOURCES, ROLLOUT_FLAGS, FlagMetrics
from cachegate.rollout import Mode
from cachegate.store_metrics import (
    ENCRYPTION_REJECTS,
    STORE_FAILURES,
    STORE_OPERATIONS,
    StoreMetrics,
)
from cachegate.stream_metrics import (
    STREAM_HIT_SOURCES,
    STREAM_SERVED,
    TEE_OUTCOMES,
    StreamMetrics,
)
from cachegate.tally import Tallies, flush_all
from cachegate.vocabulary import BypassReason, CachePath, ComparisonKind, Layer, UncacheableReason

__all__ = [
    "BYPASS_REASONS",
    "COMPARISON_KINDS",
    "ENCRYPTION_REJECTS",
    "FLAG_SOURCES",
    "LAYERS",
    "MODES",
    "OUTCOMES",
    "PATHS",
    "ROLLOUT_FLAGS",
    "SINGLE_FLIGHT_OUTCOMES",
    "STORE_FAILURES",
    "STORE_OPERATIONS",
    "STREAM_HIT_SOURCES",
    "STREAM_SERVED",
    "TEE_OUTCOMES",
    "UNCACHEABLE_REASONS",
    "FlagMetrics",
    "Metrics",
    "RouteMetrics",
    "StoreMetrics",
    "StreamMetrics",
    "default_metrics",
    "exposition",
]

LAYERS = tuple(layer.value for layer in Layer)
"""Values of `cache_layer`: L1 result cache and L2 embedding cache, as in the original service."""
PATHS = tuple(path.value for path in CachePath)
"""`shared`: a single-flight waiter answered with its leader's fresh result (counted as a hit)."""
MODES = tuple(mode.value for mode in Mode)
OUTCOMES = tuple(outcome.value for outcome in Outcome)
COMPARISON_KINDS = tuple(kind.value for kind in ComparisonKind)
BYPASS_REASONS = tuple(reason.value for reason in BypassReason)
SINGLE_FLIGHT_OUTCOMES = ("shared", "timeout", "not_shared")
UNCACHEABLE_REASONS = tuple(reason.value for reason in UncacheableReason)

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
_SIZE_BUCKETS = tuple(float(2**n) for n in range(6, 24, 2))


class Metrics(StoreMetrics, StreamMetrics, FlagMetrics):
    """All CacheGate metrics, registered once in `registry` under `namespace`.

    One object is the telemetry of one cache: the gate, its stores and its embedders are each
    given it at construction (`metrics=`, by default `default_metrics()`). The store, stream and
    flag families are defined in their own modules and are part of it.
    """

    def __init__(
        self,
        *,
        namespace: str = "cachegate",
        registry: CollectorRegistry | None = REGISTRY,
        routes: Sequence[str] = (),
        invalidation_reasons: Sequence[str] = (),
    ) -> None:
        self.namespace = namespace
        self.registry = registry
        """Where the series are registered (None: nowhere)."""
        self.tallies = Tallies()
        """The request path's counts (`RouteMetrics`), flushed before every collection."""
        ns, reg = namespace, registry
        if reg is not None:
            reg.register(_FlushFirst(self.tallies))
        StoreMetrics.__init__(self, namespace=ns, registry=reg)
        StreamMetrics.__init__(self, namespace=ns, registry=reg, latency_buckets=_LATENCY_BUCKETS)
        FlagMetrics.__init__(self, namespace=ns, registry=reg)
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
        self.comparisons_ignored = Counter(
            "comparisons_ignored",
            "Comparisons left out because the cache scope was written while the fresh answer "
            "was computed: the fresh answer moved, so the mismatch says nothing of staleness.",
            ["cache_layer", "kind"],
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
        self.cost_avoided = Counter(
            "cost_avoided_dollars",
            "Estimated money avoided by hits, in dollars.",
            ["cache_layer"],
            namespace=ns,
            registry=reg,
        )
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
        self._initialise(routes, invalidation_reasons)

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
                self.comparisons_ignored.labels(layer, kind)
                for outcome in OUTCOMES:
                    self.comparisons.labels(layer, kind, outcome)
        for reason in BYPASS_REASONS:
            self.bypasses.labels(reason)
        for reason in UNCACHEABLE_REASONS:
            self.uncacheable.labels(reason)
        for outcome in SINGLE_FLIGHT_OUTCOMES:
            self.single_flight.labels(outcome)
        self.initialise_routes(routes, reasons)
        self.invalidations_pending.set(0)

    def initialise_routes(self, routes: Iterable[str], reasons: Iterable[str] = ()) -> None:
        """Create the per-route and per-invalidation-reason series at zero."""
        for route in routes:
            for path in PATHS:
                self.query_duration.labels(route, path)
        for reason in ("api", *reasons):
            self.invalidations.labels(reason)


class RouteMetrics:
    """The L1 series one cached route touches per request, bound once and counted as tallies.

    `labels()` takes a lock and builds a tuple on every call, and every increment takes another
    lock: binding the children at start-up and counting into `cachegate.tally` tallies keeps a
    request's metrics to a few additions. The series see the counts at the next scrape, and
    within `tally.FLUSH_DELAY` seconds in any case.
    """

    def __init__(self, metrics: Metrics, route: str) -> None:
        layer = LAYERS[0]
        tallies = self._tallies = metrics.tallies
        count = tallies.counter
        self.duration = {
            path: tallies.histogram(metrics.query_duration.labels(route, path)) for path in PATHS
        }
        self._hits = count(metrics.hits.labels(layer))
        self._misses = count(metrics.misses.labels(layer))
        self._calls_avoided = count(metrics.calls_avoided.labels(layer))
        self._cost_avoided = count(metrics.cost_avoided.labels(layer))
        self._decisions = {
            (l1, l2): (
                count(metrics.decisions.labels(layer, l1)),
                count(metrics.decisions.labels(LAYERS[1], l2)),
            )
            for l1 in MODES
            for l2 in MODES
        }
        self._bypasses = {reason: count(metrics.bypasses.labels(reason)) for reason in BypassReason}
        self._shadow = {
            found: count(metrics.shadow_lookups.labels(layer, result))
            for found, result in ((True, "hit"), (False, "miss"))
        }
        self._stream_hits = {s: count(metrics.stream_hits.labels(s)) for s in STREAM_HIT_SOURCES}
        self._followers = {o: count(metrics.stream_followers.labels(o)) for o in TEE_OUTCOMES}
        self._shared = {o: count(metrics.single_flight.labels(o)) for o in SINGLE_FLIGHT_OUTCOMES}
        self._uncacheable = {r: count(metrics.uncacheable.labels(r)) for r in UncacheableReason}
        self._first_byte = {
            s: tallies.histogram(metrics.stream_first_byte.labels(s)) for s in STREAM_SERVED
        }

    def finished(self, path: CachePath, seconds: float) -> None:
        """One request's duration, by the path it took."""
        self.duration[path].observe(seconds)
        self._tallies.touch()

    def bypass(self, reason: BypassReason) -> None:
        """Count one bypass."""
        self._bypasses[reason].value += 1

    def decided(self, l1: str, l2: str) -> None:
        """Count one request's decision for both layers."""
        first, second = self._decisions[l1, l2]
        first.value += 1
        second.value += 1

    def served_from_cache(self, cost: float) -> None:
        """One hit: a fresh computation, and its `cost`, avoided."""
        self._hits.value += 1
        self._calls_avoided.value += 1
        self._cost_avoided.value += cost

    def missed(self) -> None:
        """One miss: the answer is computed fresh."""
        self._misses.value += 1

    def shadow_lookup(self, found: bool) -> None:
        """One shadow lookup, by whether it found an entry."""
        self._shadow[found].value += 1

    def stream_hit(self, source: str) -> None:
        """One streamed hit, from the store (`store`) or a leader's live stream (`tee`)."""
        self._stream_hits[source].value += 1

    def followed(self, outcome: str) -> None:
        """How one follower of a live stream ended (`complete`, `fallback`, `diverged`)."""
        self._followers[outcome].value += 1

    def shared(self, outcome: str) -> None:
        """How one wait for an identical computation ended (`shared`, `not_shared`, `timeout`)."""
        self._shared[outcome].value += 1

    def uncacheable(self, reason: UncacheableReason) -> None:
        """One fresh answer served but not stored, by why."""
        self._uncacheable[reason].value += 1

    def first_byte(self, served: str, seconds: float) -> None:
        """A streamed answer's time to its first body byte, by how it was served."""
        self._first_byte[served].observe(seconds)


class _FlushFirst:
    """A collector with no series of its own, registered ahead of the families: collecting the
    registry flushes the tallies into them first, so a scrape sees every count so far."""

    def __init__(self, tallies: Tallies) -> None:
        self.tallies = tallies

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterable[Metric]:
        self.tallies.flush()
        return ()


def exposition(registry: CollectorRegistry = REGISTRY) -> bytes:
    """The text a `/metrics` endpoint serves for `registry`.

    With `PROMETHEUS_MULTIPROC_DIR` set (several worker processes), the default registry is
    replaced by one that sums every worker's files, so any worker answers for all of them.
    """
    if registry is REGISTRY and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        flush_all()  # this worker's counts; the others' follow within `FLUSH_DELAY`
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
