"""The demo's flag state: a stage file from `flags/`, switchable at runtime, or a live Unleash.

Switching stages at runtime is a demo convenience (`POST /_demo/stage`) so that `cachegate
replay` can walk the rollout without an Unleash server. A connected demo refuses it: there the
stages are moved on the server (`cachegate flags apply`), as in production.
"""

from __future__ import annotations

from cachegate.flags import FlagRollout, OfflineFlags, UnleashFlags, stage_path, stages


class StageSwitchRefused(RuntimeError):
    """The flags come from an Unleash server; stages are changed there."""


class StageControl:
    """Owns the demo's `FlagRollout` and knows which stage it was given."""

    def __init__(self, source: OfflineFlags | UnleashFlags, stage: str) -> None:
        self.source = source
        self.rollout = FlagRollout(source)
        self._stage = stage

    @classmethod
    def offline(cls, stage: str) -> StageControl:
        """Flags from the stage file `stage`; `UnknownStageError` lists the stages if none."""
        path = stage_path(stage)
        return cls(OfflineFlags(path.read_text(encoding="utf-8")), stage)

    @property
    def connected(self) -> bool:
        """Whether the flags follow an Unleash server."""
        return isinstance(self.source, UnleashFlags)

    @property
    def stage(self) -> str:
        """The stage loaded offline, or the bootstrap stage of a connected source."""
        return self._stage

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
