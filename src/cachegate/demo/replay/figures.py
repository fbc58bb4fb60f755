"""What a stage measured: the scrape deltas of the target's `/metrics` (`Samples`), and the
client- and server-side figures of one stage (`StageResult`). Only counts and durations: never a
tenant id or a question."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families


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
    ignored: float = 0.0
    """Left out: the scope was written while the fresh answer was computed."""

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

        ignored = delta.total(f"{ns}_comparisons_ignored_total", cache_layer=name, kind=kind)
        return Agreement(count("match"), count("mismatch"), count("error"), ignored)

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
