"""The one place an embedder counts: each event goes to Prometheus and to the embedder's own
totals in the same call, so `embedder.stats` and the metrics never disagree.

Lookups count distinct texts of a call. `tokens_avoided` is estimated: each served hit counts the
billed input tokens per text seen so far; `cost_avoided` is `calls_avoided` times the cost per
call; `seconds_avoided` is `calls_avoided` times the mean Cohere call duration seen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cachegate.comparators import Outcome
from cachegate.metrics import Metrics
from cachegate.vocabulary import BypassReason, ComparisonKind, Layer


class Event(StrEnum):
    """What an embedder counts; each value is the name of its total in `EmbedderStats`."""

    CALL = "calls"
    UNCACHEABLE = "uncacheable"
    """A call the cache does not understand (another input, option or type): Cohere only."""
    NO_TENANT = "no_tenant"
    """A tenant-scoped call without a tenant: Cohere only."""
    STORE_ERROR = "store_error_bypasses"
    """A call whose store read failed: Cohere only, as L1's `store_error` bypass."""
    HIT = "hits"
    MISS = "misses"
    SHADOW_HIT = "shadow_hits"
    SHADOW_MISS = "shadow_misses"
    MATCH = "matches"
    MISMATCH = "mismatches"
    COMPARISON_ERROR = "comparison_errors"
    CORRUPT = "corrupt"
    STORE_FAILURE = "store_errors"
    COHERE_CALL = "cohere_calls"
    COHERE_ERROR = "cohere_errors"
    TEXT_EMBEDDED = "texts_embedded"
    BILLED_TOKENS = "billed_tokens"
    COHERE_SECONDS = "cohere_seconds"
    CALL_AVOIDED = "calls_avoided"
    TOKENS_AVOIDED = "tokens_avoided"
    COST_AVOIDED = "cost_avoided"
    SECONDS_AVOIDED = "seconds_avoided"


COMPARED = {
    Outcome.MATCH: Event.MATCH,
    Outcome.MISMATCH: Event.MISMATCH,
    Outcome.ERROR: Event.COMPARISON_ERROR,
}
"""The event of each comparison outcome (`Outcome`, as in L1)."""
_LAYER = Layer.EMBEDDING
_SHADOW = ComparisonKind.SHADOW
_EXPORTED: dict[Event, Callable[[Metrics], Any]] = {
    Event.STORE_ERROR: lambda m: m.bypasses.labels(BypassReason.STORE_ERROR),
    Event.HIT: lambda m: m.hits.labels(_LAYER),
    Event.MISS: lambda m: m.misses.labels(_LAYER),
    Event.SHADOW_HIT: lambda m: m.shadow_lookups.labels(_LAYER, "hit"),
    Event.SHADOW_MISS: lambda m: m.shadow_lookups.labels(_LAYER, "miss"),
    Event.MATCH: lambda m: m.comparisons.labels(_LAYER, _SHADOW, Outcome.MATCH),
    Event.MISMATCH: lambda m: m.comparisons.labels(_LAYER, _SHADOW, Outcome.MISMATCH),
    Event.COMPARISON_ERROR: lambda m: m.comparisons.labels(_LAYER, _SHADOW, Outcome.ERROR),
    Event.CORRUPT: lambda m: m.corrupt_entries.labels(_LAYER),
    Event.CALL_AVOIDED: lambda m: m.calls_avoided.labels(_LAYER),
    Event.TOKENS_AVOIDED: lambda m: m.tokens_avoided.labels(_LAYER),
    Event.COST_AVOIDED: lambda m: m.cost_avoided.labels(_LAYER),
}
"""The Prometheus series of each event that has one (children bound once, at construction)."""
_BYPASSES = (Event.UNCACHEABLE, Event.NO_TENANT, Event.STORE_ERROR)


@dataclass(frozen=True, slots=True)
class EmbedderStats:
    """A snapshot of one embedder's totals, read from its `Tally` (never counted separately)."""

    calls: int = 0
    bypassed: int = 0
    """Calls that went to Cohere uncached: uncacheable, without a tenant, or a failed read."""
    hits: int = 0
    misses: int = 0
    shadow_hits: int = 0
    shadow_misses: int = 0
    matches: int = 0
    mismatches: int = 0
    comparison_errors: int = 0
    corrupt: int = 0
    store_errors: int = 0
    cohere_calls: int = 0
    cohere_errors: int = 0
    texts_embedded: int = 0
    billed_tokens: float = 0.0
    cohere_seconds: float = 0.0
    calls_avoided: int = 0
    tokens_avoided: float = 0.0
    cost_avoided: float = 0.0
    seconds_avoided: float = 0.0

    @property
    def tokens_per_text(self) -> float:
        """Mean billed input tokens per text Cohere embedded (0 before the first call)."""
        return self.billed_tokens / self.texts_embedded if self.texts_embedded else 0.0

    @property
    def seconds_per_call(self) -> float:
        """Mean duration of a successful Cohere call (0 before the first one)."""
        return self.cohere_seconds / self.cohere_calls if self.cohere_calls else 0.0

    @property
    def hit_rate(self) -> float:
        """Served hits over served lookups (0 before any)."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0


_FIELDS = frozenset(f.name for f in dataclasses.fields(EmbedderStats))


class Tally:
    """An embedder's counting: `count(event, amount)` is the only way anything is counted."""

    __slots__ = ("_children", "_sizes", "_totals")

    def __init__(self, metrics: Metrics) -> None:
        self._totals: dict[Event, float] = dict.fromkeys(Event, 0)
        self._children = {event: bind(metrics) for event, bind in _EXPORTED.items()}
        self._sizes = metrics.entry_size.labels(_LAYER)

    def count(self, event: Event, amount: float = 1) -> None:
        """Add `amount` to `event`'s total and to its Prometheus series, if it has one (a zero
        adds nothing, and takes no series' lock)."""
        if not amount:
            return
        self._totals[event] += amount
        child = self._children.get(event)
        if child is not None:
            child.inc(amount)

    def per_unit(self, total: Event, units: Event) -> float:
        """`total` over `units` so far (0 before the first unit), without a `stats` snapshot."""
        count = self._totals[units]
        return self._totals[total] / count if count else 0.0

    def stored(self, sizes: Iterable[int]) -> None:
        """Observe the sizes of entries written (the `entry_size_bytes` histogram)."""
        for size in sizes:
            self._sizes.observe(size)

    @property
    def stats(self) -> EmbedderStats:
        """The totals so far."""
        totals = {event.value: value for event, value in self._totals.items()}
        bypassed = sum(self._totals[event] for event in _BYPASSES)
        fields = {name: value for name, value in totals.items() if name in _FIELDS}
        return EmbedderStats(bypassed=int(bypassed), **fields)  # type: ignore[arg-type]
