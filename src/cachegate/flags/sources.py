"""Flag sources over the Unleash Python SDK: where `FlagRollout` reads the flags.

Two sources hold the flag state, both an `UnleashClient` evaluating with Unleash's own engine:

- `OfflineFlags`: bootstrapped from a stage file (the `/api/client/features` format); no thread,
  no network. The embedded default for `make run`.
- `UnleashFlags`: connected to an Unleash server, bootstrapped from a stage file so that a server
  that is down at start still yields defined flags; `start()` initialises the client in a thread
  (never on the event loop), and a server that goes down later leaves the last known state
  (persisted in a `FlagStateFile`, see docs/flags.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from UnleashClient.clients.unleash_client import UnleashClient
from UnleashClient.utils import InstanceAllowType

from cachegate.flags.cache import FeatureCache, FlagSnapshot
from cachegate.flags.stages import DEFAULT_REFRESH_INTERVAL, read_payload
from cachegate.flags.state import (
    FlagStateFile,
    FlagStateTracker,
    Source,
    quiet_sdk_logs,
)
from cachegate.metrics import Metrics

logger = logging.getLogger("cachegate.flags")


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
        return cls(read_payload(path), metrics=metrics)

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
        payload = read_payload(bootstrap) if bootstrap is not None else None
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
