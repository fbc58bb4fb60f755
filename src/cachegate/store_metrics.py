"""The metric family of stores: call latencies and failures, the breaker, refused writes,
the eviction policy, epoch changes, encrypted values read as misses.

Part of `cachegate.metrics.Metrics`; `RedisStore` and `EncryptedStore` feed it.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
"""Values of `operation`: the `Store` calls, and `RedisStore`'s write probe."""
STORE_FAILURES = ("error", "timeout", "rejected", "refused")
"""Values of `kind`: failed, past its deadline, refused by the open breaker, or by Redis."""
ENCRYPTION_REJECTS = ("unknown_key", "invalid")
"""Values of `reason` on `encrypted_values_rejected` (`EncryptedStore.RejectReason`)."""
STORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


class StoreMetrics:
    """The stores' series, registered in `registry`, every labelled one at zero."""

    def __init__(self, *, namespace: str, registry: CollectorRegistry | None) -> None:
        ns, reg = namespace, registry
        self.store_duration = Histogram(
            "store_operation_duration_seconds",
            "Latency of successful store calls by operation (failures: store_failures_total).",
            ["operation"],
            namespace=ns,
            registry=reg,
            buckets=STORE_BUCKETS,
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
        self.encrypted_rejected = Counter(
            "encrypted_values_rejected",
            "Encrypted values read as misses: under an unknown (retired) key, or not authentic.",
            ["reason"],
            namespace=ns,
            registry=reg,
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
        for operation in STORE_OPERATIONS:
            self.store_duration.labels(operation)
            for kind in STORE_FAILURES:
                self.store_failures.labels(operation, kind)
        for reason in ENCRYPTION_REJECTS:
            self.encrypted_rejected.labels(reason)
        self.breaker_open.set(0)
        self.store_writes_refused.set(0)
        self.store_noeviction.set(0)
