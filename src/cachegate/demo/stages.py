"""The demo's flag state: a stage file from `flags/`, switchable at runtime, or a live Unleash.

Switching stages at runtime is a demo convenience (`POST /_demo/stage`) so that `cachegate
replay` can walk the rollout without an Unleash server. A connected demo refuses it: there the
stages are moved on the server (`cachegate flags apply`), as in production, and the demo reports
the stage its current flags match, where they came from and how old they are, so that a replay
can wait until the service follows.
"""

from __future__ import annotations

import json
from typing import Any

from cachegate.flags import (
    FlagRollout,
    OfflineFlags,
    UnleashFlags,
    nearest_stage,
    stage_path,
    stages,
)
from cachegate.metrics import Metrics


class StageSwitchRefused(RuntimeError):
    """The flags come from an Unleash server; stages are changed there."""


class StageControl:
    """Owns the demo's `FlagRollout` and knows which stage it was given."""

    def __init__(self, source: OfflineFlags | UnleashFlags, stage: str | None) -> None:
        """`stage`: the stage loaded offline, or the bootstrap stage of a connected source
        (None: none chosen)."""
        self.source = source
        self.rollout = FlagRollout(source)
        self._stage = stage

    @classmethod
    def offline(cls, stage: str, *, metrics: Metrics | None = None) -> StageControl:
        """Flags from the stage file `stage`; `UnknownStageError` lists the stages if none."""
        path = stage_path(stage)
        return cls(OfflineFlags(path.read_text(encoding="utf-8"), metrics=metrics), stage)

    @property
    def connected(self) -> bool:
        """Whether the flags follow an Unleash server."""
        return isinstance(self.source, UnleashFlags)

    @property
    def bootstrap(self) -> str | None:
        """The stage loaded offline, or the bootstrap stage of a connected source."""
        return self._stage

    @property
    def stage(self) -> str | None:
        """The stage the flags in use match exactly (None: none); offline, the loaded one."""
        if not self.connected:
            return self._stage
        return self.report()["stage"]  # type: ignore[no-any-return]

    def report(self) -> dict[str, Any]:
        """What `GET /_demo/stage` answers about the flags in use."""
        tracker = self.source.tracker
        features: dict[str, Any] = {}
        try:
            data = json.loads(self.source.payload or "{}")
            features = {f["name"]: f for f in data.get("features", []) if isinstance(f, dict)}
        except (ValueError, KeyError, TypeError, AttributeError):
            features = {}
        if self.connected:
            nearest, differences = nearest_stage(features)
            stage = nearest if not differences else None
        else:
            nearest, differences, stage = self._stage, [], self._stage
        age = tracker.age()
        return {
            "stage": stage,
            "source": "unleash" if self.connected else "offline",
            "flags": {
                "source": tracker.source.value,
                "age_seconds": None if age is None else round(age, 1),
                "failed_polls": tracker.failed_polls,
                "nearest_stage": nearest,
                "differences": differences,
                "bootstrap": self._stage,
            },
            "stages": self.stages(),
        }

    def stages(self) -> list[str]:
        """The stage names available."""
        return stages()

    def switch(self, stage: str) -> None:
        """Load stage `stage` (offline only). Raises `UnknownStageError` or `StageSwitchRefused`."""
        if isinstance(self.source, UnleashFlags):
            raise StageSwitchRefused(
                "the flags come from Unleash: move them there (cachegate flags apply)"
            )
        payload = stage_path(stage).read_text(encoding="utf-8")
        self.source.load(payload)
        self._stage = stage

    async def start(self) -> None:
        """Start following Unleash in a thread (returns at once); nothing to do offline."""
        await self.rollout.start()

    async def aclose(self) -> None:
        """Stop following Unleash."""
        await self.rollout.aclose()
