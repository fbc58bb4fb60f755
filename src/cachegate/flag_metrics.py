"""The metric family of the flag state: where it came from, how old it is, failed polls.

Part of `cachegate.metrics.Metrics`; only `cachegate.flags` feeds it (the core never does).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

FLAG_SOURCES = ("live", "persisted", "bootstrap", "offline")
"""Values of `flag_state_source`'s `source` (see `cachegate.flags.Source`)."""
ROLLOUT_FLAGS = (
    "cachegate.l1.serve",
    "cachegate.l1.shadow",
    "cachegate.l2.serve",
    "cachegate.l2.shadow",
)
"""The flags whose rollout must be sticky on the tenant (`flag_stickiness_overrides`)."""


class FlagMetrics:
    """The flag state's series, registered in `registry`, every labelled one at zero."""

    def __init__(self, *, namespace: str, registry: CollectorRegistry | None) -> None:
        ns, reg = namespace, registry
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
        for source in FLAG_SOURCES:
            self.flag_state_source.labels(source)
        for flag in ROLLOUT_FLAGS:
            self.flag_stickiness_overrides.labels(flag)
