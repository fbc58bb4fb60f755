"""Where the flag state came from, how old it is, and whether Unleash answers.

A process that starts while Unleash is down must not fall back to a stage that ignores the
kill switch someone turned on meanwhile. So every state fetched from Unleash is written to a
`FlagStateFile`, which every process of the service reads back at start, and the state in use
always has a `Source`:

- `live`: fetched from Unleash by this process; its age is the time since Unleash last answered.
- `persisted`: read back from the state file at start; Unleash has not answered yet.
- `bootstrap`: neither: the bootstrap stage file, `off` unless the operator chose one.
- `offline`: no Unleash configured; a stage file by choice (the demo without `UNLEASH_URL`).

`FlagStateTracker` is told about each poll by the SDK's cache. It logs the source and age once
per change, one warning when Unleash stops answering and one when it answers again (the failed
polls in between are a counter, not log lines), and exports both as metrics. The SDK's own
per-poll error lines and tracebacks are dropped by `quiet_sdk_logs`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from cachegate.metrics import Metrics

__all__ = [
    "STATE_FILE_ENV",
    "FlagStateFile",
    "FlagStateTracker",
    "PersistedState",
    "Source",
    "quiet_sdk_logs",
]

logger = logging.getLogger("cachegate.flags")

STATE_FILE_ENV = "CACHEGATE_FLAG_STATE_FILE"


class Source(StrEnum):
    """Where the flag state in use came from."""

    LIVE = "live"
    PERSISTED = "persisted"
    BOOTSTRAP = "bootstrap"
    OFFLINE = "offline"


@dataclass(frozen=True, slots=True)
class PersistedState:
    """A features payload Unleash answered, and when (Unix time) it last confirmed it."""

    payload: str
    fetched_at: float


class FlagStateFile:
    """The last flag state fetched from Unleash, in one JSON file written atomically.

    Every process of the service writes it after each answered poll and reads it at start; a
    missing, unreadable or foreign file reads as no state. Writing never raises.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._warned = False

    @classmethod
    def default(
        cls, url: str, app_name: str, environment: str, environ: Mapping[str, str] | None = None
    ) -> FlagStateFile:
        """`$CACHEGATE_FLAG_STATE_FILE`, else a file per (server, app, environment) under
        `$XDG_STATE_HOME/cachegate` (default `~/.local/state/cachegate`)."""
        env = os.environ if environ is None else environ
        explicit = env.get(STATE_FILE_ENV)
        if explicit:
            return cls(Path(explicit))
        base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        tag = hashlib.sha256(f"{url}\0{app_name}\0{environment}".encode()).hexdigest()[:12]
        return cls(Path(base) / "cachegate" / f"flags-{app_name}-{environment}-{tag}.json")

    def load(self) -> PersistedState | None:
        """The persisted state, or None (logged if a file is there but unusable)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            logger.warning("flag state file %s is unreadable (%s): ignored", self.path, exc)
            return None
        payload = data.get("payload") if isinstance(data, dict) else None
        fetched_at = data.get("fetched_at") if isinstance(data, dict) else None
        if not isinstance(payload, str) or not isinstance(fetched_at, int | float):
            logger.warning("flag state file %s is not a CacheGate flag state: ignored", self.path)
            return None
        return PersistedState(payload, float(fetched_at))

    def save(self, state: PersistedState) -> bool:
        """Write `state` (temporary file, then rename); False, logged once, if it failed."""
        body = json.dumps({"fetched_at": state.fetched_at, "payload": state.payload})
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(
                "w", encoding="utf-8", dir=self.path.parent, prefix=".flags-", delete=False
            ) as handle:
                handle.write(body)
            os.replace(handle.name, self.path)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                logger.warning(
                    "cannot write the flag state file %s (%s): a restart while Unleash is down "
                    "will use the bootstrap flags",
                    self.path,
                    exc,
                )
            return False
        return True


class FlagStateTracker:
    """Source, age and reachability of one flag source: logged once per change, and exported."""

    def __init__(
        self,
        *,
        metrics: Metrics | None = None,
        state_file: FlagStateFile | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.metrics = metrics
        self.state_file = state_file
        self.clock = clock
        self.source = Source.BOOTSTRAP
        self.fetched_at: float | None = None
        """When Unleash last confirmed the state in use (None: never)."""
        self.failed_polls = 0
        """Polls Unleash did not answer since it last did (or since start)."""
        self.lost = False
        self._lock = threading.Lock()
        self._overrides: dict[str, int] = {}

    def begin(self, source: Source, fetched_at: float | None, detail: str) -> None:
        """The state a source starts with; logged once (a warning unless it is offline)."""
        self.source, self.fetched_at = source, fetched_at
        self._export()
        level = logging.INFO if source is Source.OFFLINE else logging.WARNING
        if source is Source.PERSISTED:
            detail += f", fetched {self.age_text()} ago"
        logger.log(level, "flag state: %s (%s) until Unleash answers", source.value, detail)

    def answered(self, payload: str | None) -> None:
        """Unleash answered a poll (200 or 304); `payload` is the state now in use."""
        now = self.clock()
        with self._lock:
            was, self.source, self.fetched_at = self.source, Source.LIVE, now
            failed, self.failed_polls, lost, self.lost = self.failed_polls, 0, self.lost, False
        if lost:
            logger.warning("Unleash answers again after %d failed polls: flags are live", failed)
        elif was is not Source.LIVE:
            logger.info("flag state: live from Unleash (was %s)", was.value)
        if self.state_file is not None and payload is not None:
            self.state_file.save(PersistedState(payload, now))
        self._export()

    def unanswered(self) -> None:
        """A poll got no answer (unreachable, timeout, or an HTTP error)."""
        with self._lock:
            self.failed_polls += 1
            first, self.lost = not self.lost, True
        if self.metrics is not None:
            self.metrics.flag_fetch_failures.inc()
        if first:
            logger.warning(
                "Unleash does not answer: keeping the %s flag state (%s old); failed polls are "
                "counted in flag_fetch_failures_total, one more warning when it answers",
                self.source.value,
                self.age_text(),
            )

    def stickiness(self, overrides: Mapping[str, int]) -> None:
        """The rollout strategies of a new state whose stickiness was not the tenant field."""
        changed = dict(overrides) != self._overrides
        previous, self._overrides = self._overrides, dict(overrides)
        if self.metrics is not None:
            for flag in set(previous) | set(overrides):
                self.metrics.flag_stickiness_overrides.labels(flag).set(overrides.get(flag, 0))
        if changed and overrides:
            logger.warning(
                "flag strategies not sticky on the tenant, decided as if they were: %s",
                ", ".join(f"{flag} ({count})" for flag, count in sorted(overrides.items())),
            )

    @property
    def overrides(self) -> dict[str, int]:
        """Strategies per rollout flag of the current state not sticky on the tenant."""
        return dict(self._overrides)

    def age(self) -> float | None:
        """Seconds since Unleash last confirmed the state in use (None: never)."""
        return None if self.fetched_at is None else max(0.0, self.clock() - self.fetched_at)

    def age_text(self) -> str:
        age = self.age()
        return "never fetched" if age is None else f"{age:.0f} s"

    def _export(self) -> None:
        metrics = self.metrics
        if metrics is None:
            return
        for source in Source:
            metrics.flag_state_source.labels(source.value).set(int(source is self.source))
        metrics.flag_state_fetched.set(self.fetched_at or 0.0)


# --- the SDK's logs ---------------------------------------------------------------------------


_polling = threading.local()
"""Set while a thread runs an SDK poll or registration (the thread's urllib3 retries are ours)."""

_SDK_NOISE = (
    "Unleash Client feature fetch failed",
    "Unleash Client registration failed",
    "Unleash Client metrics submission",
    "Unleash client does not have cached features",
)


def mark_polling(active: bool) -> None:
    """Mark the current thread as running an SDK poll (or not)."""
    _polling.active = active


class _SdkNoise(logging.Filter):
    """Drops the SDK's per-poll failure lines and the retries of its HTTP calls."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "UnleashClient":
            return not str(record.msg).startswith(_SDK_NOISE)
        return not getattr(_polling, "active", False)


_noise = _SdkNoise()


def quiet_sdk_logs() -> None:
    """Install the filter (idempotent): `FlagStateTracker` reports outages instead."""
    for name in ("UnleashClient", "urllib3.connectionpool"):
        target = logging.getLogger(name)
        if _noise not in target.filters:
            target.addFilter(_noise)
