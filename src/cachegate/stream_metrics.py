"""The metric family of streamed answers (SSE, chunked): hits, time to first byte, the tee.

Part of `cachegate.metrics.Metrics`; kept apart because only policies with `streams=` feed it.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram

STREAM_HIT_SOURCES = ("store", "tee")
"""Where a streamed hit came from: sent from the store, or shared live from a leader."""
STREAM_SERVED = ("hit", "tee", "fresh")
"""Values of `served` on the time-to-first-byte histogram of streamed answers."""
TEE_OUTCOMES = ("complete", "fallback", "diverged")
"""What became of a follower of a live stream."""


class StreamMetrics:
    """The series of streamed answers, registered in `registry`, every labelled one at zero;
    time to first byte in `latency_buckets` (those of `query_duration_seconds`)."""

    def __init__(
        self,
        *,
        namespace: str,
        registry: CollectorRegistry | None,
        latency_buckets: Sequence[float],
    ) -> None:
        ns, reg = namespace, registry
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
            buckets=latency_buckets,
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
