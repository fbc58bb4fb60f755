"""The SDK's feature cache, and the immutable `FlagSnapshot` it publishes per payload.

`FeatureCache` is the Unleash SDK's cache: it keeps the feature payload, tells a
`FlagStateTracker` (`state.py`) whether each poll was answered, and publishes one `FlagSnapshot`
per payload, so that `FlagRollout` can memoise decisions per snapshot version.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from UnleashClient.cache import BaseCache
from UnleashClient.constants import ETAG, FEATURES_URL

from cachegate.flags.stages import FLAG_L1_VERIFY, parse_features, sticky_payload
from cachegate.flags.state import FlagStateTracker, mark_polling

logger = logging.getLogger("cachegate.flags")

_versions = itertools.count(1)
"""Snapshot versions, unique in the process so that no two states (or sources) share one."""


@dataclass(frozen=True, slots=True)
class FlagSnapshot:
    """What a source's flag state looks like, published as one immutable object per state.

    `settled` is False while a new payload may not have reached the SDK's engine yet: decisions
    are not memoised then. `verify_rate` is the `cachegate.l1.verify` sample rate read from the
    payload (0..1), or None when the flag's shape needs the SDK to evaluate it per request.
    """

    version: int
    settled: bool
    known: frozenset[str]
    verify_rate: float | None


_EMPTY = FlagSnapshot(version=0, settled=True, known=frozenset(), verify_rate=0.0)


def _snapshot_of(payload: str | None, *, settled: bool) -> FlagSnapshot:
    """The snapshot of a features payload; an unparseable payload knows no flags (all off)."""
    if payload is None:
        return replace(_EMPTY, version=next(_versions), settled=settled)
    try:
        features = parse_features(payload)
    except ValueError:
        logger.warning("the Unleash features payload is unreadable: every layer is off")
        features = {}
    return FlagSnapshot(
        version=next(_versions),
        settled=settled,
        known=frozenset(features),
        verify_rate=_verify_rate(features.get(FLAG_L1_VERIFY)),
    )


def _verify_rate(feature: Mapping[str, Any] | None) -> float | None:
    """The verify sample rate of a simple flag shape, or None to let the SDK evaluate it.

    Simple shapes: disabled or missing (0), one unconstrained `default` strategy (1), one
    unconstrained `flexibleRollout` with stickiness `random` (its rollout percentage).
    """
    if feature is None or feature.get("enabled") is not True:
        return 0.0
    strategies = feature.get("strategies")
    if feature.get("dependencies") or not isinstance(strategies, list) or len(strategies) != 1:
        return None
    strategy = strategies[0]
    if not isinstance(strategy, dict):
        return None
    if strategy.get("constraints") or strategy.get("segments") or strategy.get("disabled"):
        return None
    parameters = strategy.get("parameters") or {}
    if strategy.get("name") == "default":
        return 1.0
    if strategy.get("name") == "flexibleRollout" and parameters.get("stickiness") == "random":
        try:
            percentage = float(parameters.get("rollout", 0))
        except (TypeError, ValueError):
            return None
        return min(max(percentage, 0.0), 100.0) / 100.0
    return None


class FeatureCache(BaseCache):
    """The SDK's cache, in memory, publishing a `FlagSnapshot` whenever the payload changes.

    The SDK writes a fetched payload here and then hands it to its engine. A new payload
    therefore yields an unsettled snapshot, which settles when the SDK next reads the ETag: it
    does so at the start of its next poll, after the previous payload reached the engine. Sources
    that load synchronously call `settle()` themselves.

    A poll reads the ETag, fetches, writes the payload if Unleash answered, and reads the payload
    back for its engine: so a poll with no write in between got no answer. The ETag read is
    always empty, so every poll is a full fetch: Unleash answers a conditional one with a 304
    that may carry no ETag, which writes nothing and could not be told from a failure (the
    payload is a few kilobytes). Each poll's outcome goes to `tracker`. The engine reads the
    payload with every rollout strategy made sticky on the tenant (`sticky_payload`); the
    tracker persists the raw one.
    """

    def __init__(self, tracker: FlagStateTracker | None = None) -> None:
        self._values: dict[str, Any] = {}
        self._payload: str | None = None
        self._engine_payload: str | None = None
        self._lock = threading.Lock()
        self.tracker = tracker if tracker is not None else FlagStateTracker()
        self.snapshot: FlagSnapshot = replace(_EMPTY, version=next(_versions))
        self.bootstrapped = False
        self.polls = 0
        """Polls the SDK has started (it reads the ETag once per poll)."""
        self._polling = False
        self._answered = False

    @property
    def payload(self) -> str | None:
        """The features payload in use, as Unleash (or the bootstrap) gave it."""
        return self._payload

    def bootstrap(self, payload: str) -> None:
        """Seed the cache with a payload the SDK will load at construction."""
        self.set(FEATURES_URL, payload)
        self.bootstrapped = True

    def settle(self) -> None:
        """Mark the current payload as loaded into the engine."""
        with self._lock:
            if not self.snapshot.settled:
                self.snapshot = replace(self.snapshot, version=next(_versions), settled=True)

    def set(self, key: str, value: Any) -> None:
        """Store a value; a changed features payload publishes a new, unsettled snapshot."""
        overrides: dict[str, int] | None = None
        with self._lock:
            self._values[key] = value
            if self._polling and key in (FEATURES_URL, ETAG):
                self._answered = True
            if key == FEATURES_URL and value != self._payload:
                self._payload = value if isinstance(value, str) else None
                overrides = {}
                self._engine_payload = self._payload
                if self._payload is not None:
                    self._engine_payload, overrides = sticky_payload(self._payload)
                self.snapshot = _snapshot_of(self._payload, settled=False)
        if overrides is not None:
            self.tracker.stickiness(overrides)

    def mset(self, data: dict[str, Any]) -> None:
        """Store several values."""
        for key, value in data.items():
            self.set(key, value)

    def get(self, key: str, default: Any | None = None) -> Any:
        """Read a value; reading the ETag starts a poll (the state settles), reading the
        payload during one ends it."""
        if key == ETAG:
            self.polls += 1
            self.settle()
            with self._lock:
                self._polling, self._answered = True, False
            mark_polling(True)
            return ""
        elif key == FEATURES_URL:
            with self._lock:
                ended, answered, self._polling = self._polling, self._answered, False
            if ended:
                mark_polling(False)
                if answered:
                    self.tracker.answered(self._payload)
                else:
                    self.tracker.unanswered()
            return self._engine_payload if self._engine_payload is not None else default
        return self._values.get(key, default)

    def exists(self, key: str) -> bool:
        """Whether `key` holds a value."""
        return key in self._values

    def destroy(self) -> None:
        """Forget everything."""
        with self._lock:
            self._values.clear()
            self._engine_payload = None
