"""Autopilot mode: the autopilot owns the flags; the replay loads the stage Unleash holds, one
round at a time, and lets the autopilot take a step between rounds."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx

from cachegate.demo.replay.config import ReplayConfig
from cachegate.demo.replay.figures import StageResult
from cachegate.demo.replay.load import Progress, Replay, client_for


class _Held:
    """The switcher of autopilot mode: the autopilot owns the flags, the replay only loads."""

    async def switch(self, stage: str) -> None:
        """Nothing: the stage is whatever the autopilot holds."""


async def replay_autopilot(
    config: ReplayConfig,
    *,
    current: Callable[[], str | None],
    step: Callable[[], bool],
    rounds: int,
    progress: Progress | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> list[StageResult]:
    """Autopilot mode: load the target at the stage Unleash holds (`current`, read in a thread),
    measure it as one round, then let the autopilot take one step (`step`, in a thread; True
    ends the run: last stage or rollback). At most `rounds` rounds; a result per round."""
    async with client_for(config, transport) as client:
        runner = Replay(config, client, _Held(), progress=progress)
        results = []
        for number in range(1, rounds + 1):
            stage = await asyncio.to_thread(current) or "unknown"
            results.append(await runner.run_stage(stage, f"[{number}]"))
            if await asyncio.to_thread(step):
                break
        return results
