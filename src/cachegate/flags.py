"""Flag sources over the Unleash Python SDK, and `FlagRollout`, the `Rollout` they drive.

Two sources hold the flag state, both an `UnleashClient` evaluating with Unleash's own engine:

- `OfflineFlags`: bootstrapped from a stage file in `flags/` (the `/api/client/features` format);
  no thread, no network. The embedded default for `make run`.
- `UnleashFlags`: connected to an Unleash server, bootstrapped from a stage file so that a server
  that is down at start still yields defined flags; `start()` initialises the client in a thread
  (never on the event loop), and a server that goes down later leaves the last known state.

Both keep the SDK's feature payload in a `FeatureCache`, which publishes an immutable
`FlagSnapshot` per payload; `FlagRollout` memoises decisions per (snapshot version, tenant), so a
request normally costs a dict lookup instead of six `is_enabled` calls. The cache also tells a
`FlagStateTracker` (`flagstate.py`) whether each poll was answered, and persists what Unleash
answered, so that a start without Unleash uses the last fetched state (see docs/flags.md).

Rules (see docs/flags.md): the kill switch wins; per layer `serve` beats `shadow` beats off; a
request without tenant is in no rollout; a state without the kill-switch flag (unreadable, empty,
not ours) is off for every layer, and any other unknown flag counts as disabled. A rollout
strategy of a serve or shadow flag whose stickiness is not the tenant field is decided as if it
were (counted and logged), so a dashboard edit cannot make a tenant flip between modes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from UnleashClient.cache import BaseCache
from UnleashClient.clients.unleash_client import UnleashClient
from UnleashClient.constants import ETAG, FEATURES_URL
from UnleashClient.utils import InstanceAllowType

from cachegate.flagstate import (
    FlagStateFile,
    FlagStateTracker,
    Source,
    mark_polling,
    quiet_sdk_logs,
)
from cachegate.metrics import Metrics
from cachegate.rollout import OFF, Decision, Mode

__all__ = [
    "FLAGS",
    "FLAG_KILL_SWITCH",
    "FLAG_L1_SERVE",
    "FLAG_L1_SHADOW",
    "FLAG_L1_VERIFY",
    "FLAG_L2_SERVE",
    "FLAG_L2_SHADOW",
    "ROLLOUT_FLAGS",
    "STAGES",
    "STICKINESS_FIELD",
    "VERIFY_MIN_INTERVAL",
    "DecisionCost",
    "FeatureCache",
    "FlagRollout",
    "FlagSnapshot",
    "FlagSource",
    "OfflineFlags",
    "UnknownStageError",
    "UnleashFlags",
    "UnleashSettings",
    "flags_dir",
    "measure_decision_cost",
    "nearest_stage",
    "rollout_from_env",
    "stage_path",
    "stages",
]

logger = logging.getLogger(__name__)

FLAG_KILL_SWITCH = "cachegate.kill-switch"
FLAG_L1_SHADOW = "cachegate.l1.shadow"
FLAG_L1_SERVE = "cachegate.l1.serve"
FLAG_L2_SHADOW = "cachegate.l2.shadow"
FLAG_L2_SERVE = "cachegate.l2.serve"
FLAG_L1_VERIFY = "cachegate.l1.verify"
FLAGS = (
    FLAG_KILL_SWITCH,
    FLAG_L1_SHADOW,
    FLAG_L1_SERVE,
    FLAG_L2_SHADOW,
    FLAG_L2_SERVE,
    FLAG_L1_VERIFY,
)
"""Every flag CacheGate reads."""

STICKINESS_FIELD = "workspaceId"
"""The Unleash context field that carries the tenant; `serve` rollouts are sticky on it."""

ROLLOUT_FLAGS = (FLAG_L1_SERVE, FLAG_L1_SHADOW, FLAG_L2_SERVE, FLAG_L2_SHADOW)
"""The flags whose percentage rollouts must be sticky on the tenant."""

_ROLLOUT_STRATEGIES = {
    "flexibleRollout": "rollout",
    "gradualRolloutRandom": "percentage",
    "gradualRolloutSessionId": "percentage",
    "gradualRolloutUserId": "percentage",
}
"""Percentage strategies, and the parameter holding their percentage."""

STAGES = ("off", "dark-launch", "l2", "l1-10", "l1-50", "l1-100")
"""The rollout stages shipped in `flags/`, in rollout order."""

FLAGS_DIR_ENV = "CACHEGATE_FLAGS_DIR"
STAGE_ENV = "CACHEGATE_STAGE"
DEFAULT_STAGE = "off"
DEFAULT_REFRESH_INTERVAL = 1
"""Seconds between the SDK's polls: a kill switch takes effect within about this long."""

_REPO_FLAGS_DIR = Path(__file__).resolve().parents[2] / "flags"
_PACKAGED_FLAGS_DIR = Path(__file__).resolve().parent / "stages"
"""Where a wheel carries the repository's `flags/` (pyproject's force-include)."""


# --- stage files -------------------------------------------------------------------------------


class UnknownStageError(ValueError):
    """A stage name with no file in the flags directory."""


def flags_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The directory of stage files: `$CACHEGATE_FLAGS_DIR`, else the repository's `flags/`
    (in a checkout), else the copy an installed wheel carries."""
    env = os.environ if environ is None else environ
    override = env.get(FLAGS_DIR_ENV)
    if override:
        return Path(override)
    return _REPO_FLAGS_DIR if _REPO_FLAGS_DIR.is_dir() else _PACKAGED_FLAGS_DIR


def stages(environ: Mapping[str, str] | None = None) -> list[str]:
    """The stage names available in `flags_dir()`: shipped stages in rollout order, then others."""
    directory = flags_dir(environ)
    found = {p.stem for p in directory.glob("*.json")} if directory.is_dir() else set()
    return [s for s in STAGES if s in found] + sorted(found - set(STAGES))


def stage_path(name: str, environ: Mapping[str, str] | None = None) -> Path:
    """The file of stage `name`; raises `UnknownStageError` listing the stages if there is none."""
    directory = flags_dir(environ)
    path = directory / f"{name}.json"
    if "/" in name or "\\" in name or not path.is_file():
        known = ", ".join(stages(environ)) or "none"
        raise UnknownStageError(f"unknown flag stage {name!r} in {directory}; stages: {known}")
    return path


def _read_payload(path: Path) -> str | None:
    """The features payload in `path`, or None (logged) if it cannot be read or is not one."""
    try:
        text = path.read_text(encoding="utf-8")
        _parse_features(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        logger.warning("flag file %s is unreadable (%s): every layer is off", path, exc)
        return None
    return text


def _parse_features(text: str) -> dict[str, Mapping[str, Any]]:
    """The features of a client-features payload by name; ValueError if it is not one."""
    data = json.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get("features"), list):
        raise ValueError("not a client-features payload (no 'features' list)")
    features: dict[str, Mapping[str, Any]] = {}
    for feature in data["features"]:
        if isinstance(feature, dict) and isinstance(feature.get("name"), str):
            features[feature["name"]] = feature
    return features


def _strategy_key(strategy: Mapping[str, Any]) -> tuple[str, str, str, bool]:
    """What makes two strategies the same, ignoring ids, titles, sort order and variants."""
    parameters = {k: str(v) for k, v in (strategy.get("parameters") or {}).items()}
    return (
        str(strategy.get("name")),
        json.dumps(parameters, sort_keys=True),
        json.dumps(strategy.get("constraints") or [], sort_keys=True),
        bool(strategy.get("disabled", False)),
    )


def _not_sticky(name: str, strategy: Mapping[str, Any]) -> str | None:
    """Why a strategy of rollout flag `name` is not sticky on the tenant, or None if it is."""
    kind = strategy.get("name")
    if name not in ROLLOUT_FLAGS or kind not in _ROLLOUT_STRATEGIES:
        return None
    if kind != "flexibleRollout":
        return f"{kind} is not sticky on {STICKINESS_FIELD}"
    stickiness = (strategy.get("parameters") or {}).get("stickiness", "default")
    if stickiness == STICKINESS_FIELD:
        return None
    return f"stickiness {stickiness!r}, not {STICKINESS_FIELD!r}"


def _strategy_difference(
    name: str, got: Mapping[str, Any], want: Mapping[str, Any]
) -> tuple[str, int]:
    """How one strategy differs from the stage's, parameter by parameter where comparable, and
    in how many items."""
    reason = _not_sticky(name, got)
    changed: list[str] = []
    if got.get("name") != want.get("name"):
        text = f"strategy {got.get('name')} (stage: {want.get('name')})"
        changed.append(text)
    else:
        have = {k: str(v) for k, v in (got.get("parameters") or {}).items()}
        need = {k: str(v) for k, v in (want.get("parameters") or {}).items()}
        changed = [
            f"{key} {have.get(key, '-')} (stage: {need.get(key, '-')})"
            for key in sorted(set(have) | set(need))
            if have.get(key) != need.get(key)
        ]
        if (got.get("constraints") or []) != (want.get("constraints") or []):
            changed.append("constraints differ")
        if bool(got.get("disabled")) != bool(want.get("disabled")):
            changed.append("disabled" if got.get("disabled") else "enabled")
        text = ", ".join(changed) or "differs"
    if reason is not None:
        text += f"; not sticky on the tenant ({reason}): decided as if it were"
    return text, max(len(changed), 1)


def flag_differences(
    flags: Mapping[str, Mapping[str, Any]], stage: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """Every CacheGate flag of `flags` that differs from `stage` (both name -> feature with
    `enabled` and `strategies`), and why, one line each."""
    return [line for line, _ in _weighed_differences(flags, stage)]


def _weighed_differences(
    flags: Mapping[str, Mapping[str, Any]], stage: Mapping[str, Mapping[str, Any]]
) -> list[tuple[str, int]]:
    """`flag_differences`, each line with the number of items that differ in it."""
    lines: list[tuple[str, int]] = []
    for name in FLAGS:
        got, want = flags.get(name), stage.get(name)
        if want is None:
            continue
        if got is None:
            lines.append((f"{name}: missing (stage: {'on' if want.get('enabled') else 'off'})", 3))
            continue
        if bool(got.get("enabled")) != bool(want.get("enabled")):
            state = "on" if got.get("enabled") else "off"
            lines.append((f"{name}: {state} (stage: {'off' if state == 'on' else 'on'})", 1))
        have = list(got.get("strategies") or [])
        need = list(want.get("strategies") or [])
        if [_strategy_key(x) for x in have] == [_strategy_key(x) for x in need]:
            continue
        if len(have) != len(need):
            lines.append((f"{name}: {len(have)} strategies (stage: {len(need)})", 2))
            continue
        for index, (a, b) in enumerate(zip(have, need, strict=True)):
            if _strategy_key(a) != _strategy_key(b):
                where = f" strategy {index + 1}" if len(have) > 1 else ""
                text, weight = _strategy_difference(name, a, b)
                lines.append((f"{name}{where}: {text}", weight))
    return lines


def nearest_stage(
    flags: Mapping[str, Mapping[str, Any]], environ: Mapping[str, str] | None = None
) -> tuple[str | None, list[str]]:
    """The stage file nearest to `flags` (fewest differing items, then rollout order), and the
    differences; `(name, [])` when `flags` match a stage exactly, `(None, [])` with no stages."""
    best: tuple[str | None, list[str]] = (None, [])
    best_weight = 0
    for name in stages(environ):
        try:
            stage = _parse_features(stage_path(name, environ).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        weighed = _weighed_differences(flags, stage)
        weight = sum(w for _, w in weighed)
        if best[0] is None or weight < best_weight:
            best, best_weight = (name, [line for line, _ in weighed]), weight
        if not weighed:
            break
    return best


def _sticky_payload(payload: str) -> tuple[str, dict[str, int]]:
    """`payload` with every rollout strategy of the serve and shadow flags made sticky on the
    tenant, and how many strategies of each flag were changed; unchanged if it is unreadable."""
    try:
        data = json.loads(payload)
    except ValueError:
        return payload, {}
    if not isinstance(data, dict) or not isinstance(data.get("features"), list):
        return payload, {}
    overrides: dict[str, int] = {}
    for feature in data["features"]:
        if not isinstance(feature, dict) or not isinstance(feature.get("strategies"), list):
            continue
        name = feature.get("name")
        for index, strategy in enumerate(feature["strategies"]):
            if not isinstance(strategy, dict) or _not_sticky(str(name), strategy) is None:
                continue
            parameters = dict(strategy.get("parameters") or {})
            percentage = parameters.get(_ROLLOUT_STRATEGIES[strategy["name"]], "0")
            feature["strategies"][index] = {
                **strategy,
                "name": "flexibleRollout",
                "parameters": {
                    "rollout": str(percentage),
                    "stickiness": STICKINESS_FIELD,
                    "groupId": str(parameters.get("groupId") or name),
                },
            }
            overrides[str(name)] = overrides.get(str(name), 0) + 1
    return (json.dumps(data) if overrides else payload), overrides


# --- the flag state ----------------------------------------------------------------------------


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
        features = _parse_features(payload)
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
    payload with every rollout strategy made sticky on the tenant (`_sticky_payload`); the
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
                    self._engine_payload, overrides = _sticky_payload(self._payload)
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


class FlagSource(Protocol):
    """Where `FlagRollout` reads flags: a snapshot of the state, and the SDK's evaluation."""

    @property
    def snapshot(self) -> FlagSnapshot:
        """The current state's snapshot; a new object (and version) whenever the state changes."""
        ...

    def is_enabled(self, flag: str, context: dict[str, str]) -> bool:
        """Unleash's answer for `flag` in `context`."""
        ...

    async def start(self, *, wait: float = 0.0) -> None:
        """Begin following the flag state (from the app's lifespan)."""
        ...

    async def aclose(self) -> None:
        """Stop following it and release threads and connections."""
        ...


def _offline_client(cache: FeatureCache) -> UnleashClient:
    """An UnleashClient that evaluates the cache's bootstrap payload and never connects."""
    return UnleashClient(
        url="http://offline.invalid",
        app_name="cachegate",
        disable_metrics=True,
        disable_registration=True,
        cache=cache,
        multiple_instance_mode=InstanceAllowType.SILENTLY_ALLOW,
    )


class OfflineFlags:
    """Flags from a stage file or payload, evaluated by the SDK; no thread, no network."""

    def __init__(self, payload: str | None, *, metrics: Metrics | None = None) -> None:
        """`payload` is a client-features JSON document; None or unreadable: every layer off.
        With `metrics`, the source (`offline`) is exported."""
        self.tracker = FlagStateTracker(metrics=metrics)
        self._state: tuple[UnleashClient, FeatureCache] = self._build(payload)
        self.tracker.begin(Source.OFFLINE, None, "no Unleash configured: a stage file")

    @classmethod
    def from_file(cls, path: Path, *, metrics: Metrics | None = None) -> OfflineFlags:
        """Flags from a stage file; an unreadable file is logged and means every layer off."""
        return cls(_read_payload(path), metrics=metrics)

    @property
    def payload(self) -> str | None:
        """The features payload in use."""
        return self._state[1].payload

    def _build(self, payload: str | None) -> tuple[UnleashClient, FeatureCache]:
        cache = FeatureCache(self.tracker)
        if payload is not None:
            cache.bootstrap(payload)
        client = _offline_client(cache)
        cache.settle()
        return client, cache

    def load(self, payload: str | None) -> None:
        """Replace the flag state (a reload, or a test moving between stages)."""
        self._state = self._build(payload)

    @property
    def snapshot(self) -> FlagSnapshot:
        """The current state's snapshot."""
        return self._state[1].snapshot

    def is_enabled(self, flag: str, context: dict[str, str]) -> bool:
        """Unleash's answer for `flag` in `context`."""
        return bool(self._state[0].is_enabled(flag, context))

    async def start(self, *, wait: float = 0.0) -> None:
        """Nothing to start."""

    async def aclose(self) -> None:
        """Nothing to stop."""


@dataclass(frozen=True, slots=True)
class UnleashSettings:
    """How to reach an Unleash server (the client API, with a backend/client token).

    `refresh_interval` defaults to 1 s so that a kill switch or an autopilot rollback stops hits
    within 2 s (`make bench` measures it); a poll of unchanged flags is a 304 (ETag).
    """

    url: str
    api_token: str
    app_name: str = "cachegate"
    environment: str = "default"
    refresh_interval: int = DEFAULT_REFRESH_INTERVAL
    request_timeout: int = 5
    instance_id: str = ""
    disable_metrics: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> UnleashSettings:
        """Read `UNLEASH_URL`, `UNLEASH_API_TOKEN` (both required), `UNLEASH_APP_NAME`,
        `UNLEASH_ENVIRONMENT`, `UNLEASH_REFRESH_INTERVAL` and `UNLEASH_INSTANCE_ID`."""
        env = os.environ if environ is None else environ
        url = env.get("UNLEASH_URL", "")
        token = env.get("UNLEASH_API_TOKEN", "")
        if not url or not token:
            raise ValueError("UNLEASH_URL and UNLEASH_API_TOKEN must both be set to use Unleash")
        refresh = env.get("UNLEASH_REFRESH_INTERVAL", str(DEFAULT_REFRESH_INTERVAL))
        try:
            refresh_interval = int(refresh)
        except ValueError:
            raise ValueError(
                f"UNLEASH_REFRESH_INTERVAL must be whole seconds, got {refresh!r}"
            ) from None
        if refresh_interval < 1:
            raise ValueError("UNLEASH_REFRESH_INTERVAL must be at least 1 second")
        return cls(
            url=url,
            api_token=token,
            app_name=env.get("UNLEASH_APP_NAME", "cachegate"),
            environment=env.get("UNLEASH_ENVIRONMENT", "default"),
            refresh_interval=refresh_interval,
            instance_id=env.get("UNLEASH_INSTANCE_ID", ""),
        )


class UnleashFlags:
    """Flags followed from an Unleash server by an `UnleashClient` polling in its own threads.

    Until `start()` (and whenever the server is unreachable) the client evaluates the bootstrap
    payload or the last state it fetched. Nothing here raises into a request.
    """

    def __init__(self, client: UnleashClient, cache: FeatureCache) -> None:
        """`client` must have been built with `cache` (see `connect`)."""
        self._client = client
        self._cache = cache
        self.tracker = cache.tracker
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._closed = False

    @classmethod
    def connect(
        cls,
        settings: UnleashSettings,
        *,
        bootstrap: Path | None = None,
        state_file: FlagStateFile | None = None,
        metrics: Metrics | None = None,
    ) -> UnleashFlags:
        """A source for `settings`, holding a start state until Unleash first answers.

        The start state is the one persisted in `state_file` (the last Unleash answered, to
        any process of the service), else the stage file `bootstrap`, else every layer off.
        Every answered poll is written to `state_file`. Builds the client and loads the start
        state synchronously; makes no network call.
        """
        quiet_sdk_logs()
        tracker = FlagStateTracker(metrics=metrics, state_file=state_file)
        cache = FeatureCache(tracker)
        persisted = state_file.load() if state_file is not None else None
        payload = _read_payload(bootstrap) if bootstrap is not None else None
        if persisted is not None and state_file is not None:
            cache.bootstrap(persisted.payload)
            tracker.begin(Source.PERSISTED, persisted.fetched_at, f"from {state_file.path}")
        elif payload is not None:
            cache.bootstrap(payload)
            tracker.begin(Source.BOOTSTRAP, None, f"stage file {bootstrap}")
        else:
            tracker.begin(Source.BOOTSTRAP, None, "no persisted state, no stage: every layer off")
        client = UnleashClient(
            url=settings.url,
            app_name=settings.app_name,
            environment=settings.environment,
            instance_id=settings.instance_id or f"{socket.gethostname()}-{os.getpid()}",
            refresh_interval=settings.refresh_interval,
            request_timeout=settings.request_timeout,
            disable_metrics=settings.disable_metrics,
            custom_headers={"Authorization": settings.api_token},
            cache=cache,
        )
        cache.settle()
        return cls(client, cache)

    @property
    def snapshot(self) -> FlagSnapshot:
        """The current state's snapshot."""
        return self._cache.snapshot

    @property
    def payload(self) -> str | None:
        """The features payload in use, as Unleash (or the start state) gave it."""
        return self._cache.payload

    @property
    def polls(self) -> int:
        """Polls started since construction (each one a fetch attempt, answered or not)."""
        return self._cache.polls

    @property
    def started(self) -> bool:
        """Whether the client's initialisation (registration and first fetch) has finished."""
        return self._started.is_set()

    def is_enabled(self, flag: str, context: dict[str, str]) -> bool:
        """Unleash's answer for `flag` in `context`."""
        return bool(self._client.is_enabled(flag, context))

    async def start(self, *, wait: float = 0.0) -> None:
        """Initialise the client in a thread; wait up to `wait` seconds for its first fetch.

        Returns at once by default: requests are decided on the bootstrap flags meanwhile.
        """
        if self._closed:
            return
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._initialise, name="cachegate-unleash-start", daemon=True
            )
            self._thread.start()
        if wait > 0:
            await asyncio.to_thread(self._started.wait, wait)

    def _initialise(self) -> None:
        try:
            self._client.initialize_client()
        except Exception as exc:
            logger.warning("Unleash client did not start (%s); keeping the bootstrap flags", exc)
        finally:
            self._started.set()

    def close(self) -> None:
        """Stop polling and reporting (blocks until a running fetch ends); a source never
        started has nothing to stop and will not start afterwards."""
        self._closed = True
        if self._thread is not None:
            self._client.destroy()

    async def aclose(self) -> None:
        """`close()` in a thread, so that the event loop never waits on a fetch."""
        await asyncio.to_thread(self.close)


# --- decisions ---------------------------------------------------------------------------------


_DECISIONS = {
    (l1, l2, verify): Decision(l1=l1, l2=l2, verify=verify)
    for l1 in Mode
    for l2 in Mode
    for verify in (False, True)
}
"""Every possible decision, built once so that deciding allocates nothing (all off is `OFF`)."""
_DECISIONS[Mode.OFF, Mode.OFF, False] = OFF

_LAYERS = ((FLAG_L1_SERVE, FLAG_L1_SHADOW), (FLAG_L2_SERVE, FLAG_L2_SHADOW))


class _Memo:
    """Decisions of one snapshot version, by tenant."""

    __slots__ = ("decisions", "version")

    def __init__(self, version: int) -> None:
        self.version = version
        self.decisions: dict[str, Decision] = {}


VERIFY_MIN_INTERVAL = 900.0
"""Seconds after which a tenant's next L1-serve request is verified whatever the sample says."""


class FlagRollout:
    """The `Rollout` driven by Unleash flags, memoising decisions per (flag state, tenant).

    The `cachegate.l1.verify` sample is drawn per request and never memoised: with the shipped
    shape (one `flexibleRollout`, stickiness `random`) its percentage is read from the payload
    and compared with `random()`; any other shape is evaluated by the SDK on each L1-serve request.
    Sampling is per tenant at the bottom: while the verify flag is on (the shipped shape), a
    tenant not verified for `verify_min_interval` seconds (counted from its first request) has
    its next L1-serve request verified,
    so a tenant with little traffic is still checked (docs/runbooks.md: the detection goal behind
    the numbers). A request so marked that turns out a miss verifies nothing (it is fresh).
    """

    def __init__(
        self,
        source: FlagSource,
        *,
        rng: Callable[[], float] = random.random,
        memo_size: int = 10_000,
        verify_min_interval: float = VERIFY_MIN_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`memo_size` bounds the tenants remembered per flag state (0 disables memoisation) and
        the tenants whose last verification is remembered; `verify_min_interval` 0 disables the
        per-tenant minimum."""
        self._source = source
        self._rng = rng
        self._memo_size = memo_size
        self._memo = _Memo(-1)
        self._failed_version = -1
        self._verify_min_interval = verify_min_interval
        self._clock = clock
        self._verified: dict[str, float] = {}

    @property
    def source(self) -> FlagSource:
        """Where the flags come from."""
        return self._source

    async def start(self, *, wait: float = 0.0) -> None:
        """Start the source (call from the app's lifespan startup)."""
        await self._source.start(wait=wait)

    async def aclose(self) -> None:
        """Stop the source (call from the app's lifespan shutdown)."""
        await self._source.aclose()

    def decide(self, tenant: str | None) -> Decision:
        """This request's decision; `OFF` without tenant or on any failure. Never raises."""
        try:
            decision = OFF if tenant is None else self._decide(tenant)
        except Exception:
            decision = OFF
            version = self._memo.version
            if version != self._failed_version:
                self._failed_version = version
                logger.warning("flag evaluation failed: every layer off", exc_info=True)
        return decision

    def _decide(self, tenant: str) -> Decision:
        snapshot = self._source.snapshot
        memo = self._memo
        if memo.version != snapshot.version:
            memo = self._memo = _Memo(snapshot.version)
        decision = memo.decisions.get(tenant)
        if decision is None:
            decision = self._evaluate(snapshot, tenant)
            if snapshot.settled and self._memo_size > 0 and self._source.snapshot is snapshot:
                self._remember(memo.decisions, tenant, decision)
        if decision.l1 is Mode.SERVE and self._verify(snapshot, tenant):
            return _DECISIONS[decision.l1, decision.l2, True]
        return decision

    def _remember(self, decisions: dict[str, Decision], tenant: str, decision: Decision) -> None:
        if len(decisions) >= self._memo_size:
            try:
                del decisions[next(iter(decisions))]
            except (KeyError, RuntimeError, StopIteration):
                decisions.clear()
        decisions[tenant] = decision

    def _evaluate(self, snapshot: FlagSnapshot, tenant: str) -> Decision:
        """The flags' decision for `tenant`, without verify and without memo."""
        known = snapshot.known
        if FLAG_KILL_SWITCH not in known:
            return OFF
        context = {STICKINESS_FIELD: tenant}
        is_enabled = self._source.is_enabled
        if is_enabled(FLAG_KILL_SWITCH, context):
            return OFF
        modes = []
        for serve, shadow in _LAYERS:
            if serve in known and is_enabled(serve, context):
                modes.append(Mode.SERVE)
            elif shadow in known and is_enabled(shadow, context):
                modes.append(Mode.SHADOW)
            else:
                modes.append(Mode.OFF)
        return _DECISIONS[modes[0], modes[1], False]

    def _verify(self, snapshot: FlagSnapshot, tenant: str) -> bool:
        rate = snapshot.verify_rate
        if rate is None:  # constraints may exclude tenants on purpose: no minimum
            return FLAG_L1_VERIFY in snapshot.known and self._source.is_enabled(
                FLAG_L1_VERIFY, {STICKINESS_FIELD: tenant}
            )
        if rate <= 0.0:
            return False
        sampled = self._rng() < rate
        if self._verify_min_interval <= 0:
            return sampled
        now = self._clock()
        last = self._verified.get(tenant)
        if last is None:  # the interval starts at a tenant's first request: no burst at start
            self._note_verified(tenant, now)
            return sampled
        if not sampled and now - last < self._verify_min_interval:
            return False
        self._note_verified(tenant, now)
        return True

    def _note_verified(self, tenant: str, now: float) -> None:
        verified = self._verified
        verified.pop(tenant, None)
        if len(verified) >= max(self._memo_size, 1):
            try:
                del verified[next(iter(verified))]
            except (KeyError, RuntimeError, StopIteration):
                verified.clear()
        verified[tenant] = now


def rollout_from_env(
    stage_file: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    metrics: Metrics | None = None,
) -> FlagRollout:
    """A `FlagRollout` configured from the environment.

    With `UNLEASH_URL` set: connected (`UnleashSettings.from_env`), starting from the state
    persisted in `FlagStateFile.default` (`CACHEGATE_FLAG_STATE_FILE`), else from `stage_file`;
    without: offline on `stage_file`. `stage_file` defaults to the stage named by
    `CACHEGATE_STAGE`, else `off`. Call `await rollout.start()` / `await rollout.aclose()` from
    the app's lifespan (no-ops offline).
    """
    env = os.environ if environ is None else environ
    if stage_file is None:
        stage_file = stage_path(env.get(STAGE_ENV) or DEFAULT_STAGE, env)
    source: FlagSource
    if env.get("UNLEASH_URL"):
        settings = UnleashSettings.from_env(env)
        source = UnleashFlags.connect(
            settings,
            bootstrap=stage_file,
            state_file=FlagStateFile.default(
                settings.url, settings.app_name, settings.environment, env
            ),
            metrics=metrics,
        )
    else:
        source = OfflineFlags.from_file(stage_file, metrics=metrics)
    return FlagRollout(source)


# --- measuring the per-request cost -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DecisionCost:
    """Mean wall time of one `decide()` call, memoised and not, in nanoseconds."""

    memoised_ns: float
    unmemoised_ns: float
    decisions: int


def measure_decision_cost(
    source: FlagSource,
    *,
    tenants: Sequence[str] | None = None,
    rounds: int = 5,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> DecisionCost:
    """Time `decide()` over `tenants` for `rounds` rounds, with and without memoisation.

    The memoised rollout is warmed first, so its figure is the steady state of a stable flag
    state; the other evaluates every flag with the SDK on each call.
    """
    names = list(tenants) if tenants is not None else [f"tenant-{i}" for i in range(1000)]
    memoised = FlagRollout(source, memo_size=max(len(names), 1))
    unmemoised = FlagRollout(source, memo_size=0)
    for name in names:
        memoised.decide(name)

    def timed(rollout: FlagRollout) -> float:
        decide = rollout.decide
        start = clock()
        for _ in range(rounds):
            for name in names:
                decide(name)
        return (clock() - start) / (rounds * len(names))

    return DecisionCost(
        memoised_ns=timed(memoised),
        unmemoised_ns=timed(unmemoised),
        decisions=rounds * len(names),
    )
