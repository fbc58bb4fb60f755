"""How a replay moves the target between stages: the demo's endpoint, or an Unleash server and
then waiting until the target reports the stage from live flags."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import KW_ONLY, dataclass
from typing import Any, Protocol

import httpx

from cachegate.demo.replay.config import ReplayError


class Switcher(Protocol):
    """Moves the target's flags to a stage."""

    async def switch(self, stage: str) -> None:
        """Return once the target decides by `stage`'s flags."""
        ...


@dataclass
class DemoSwitcher:
    """Switches the demo's offline flags through its demo-only `POST /_demo/stage`."""

    client: httpx.AsyncClient

    async def switch(self, stage: str) -> None:
        """Ask the demo to load `stage`."""
        try:
            response = await self.client.post("/_demo/stage", json={"stage": stage})
        except httpx.HTTPError as error:
            raise ReplayError(f"cannot switch the stage: {type(error).__name__}") from error
        if response.status_code != 200:
            detail = _error_text(response)
            raise ReplayError(f"the target refused stage {stage!r}: {detail}")


@dataclass
class UnleashSwitcher:
    """Moves the flags on an Unleash server (`apply_stage`), then waits until the target says
    it decides by them: `GET /_demo/stage` reports the stage, from live flags.

    A target that does not follow within `timeout` seconds (Unleash unreachable from it, flags
    edited meanwhile, another project or environment) is a `ReplayError` naming what it reports.
    """

    apply: Callable[[str], None]
    client: httpx.AsyncClient
    _: KW_ONLY
    timeout: float = 60.0
    poll: float = 0.5
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    clock: Callable[[], float] = time.monotonic

    async def switch(self, stage: str) -> None:
        """Apply `stage` in a thread (the admin client blocks), then wait for the target."""
        await asyncio.to_thread(self.apply, stage)
        deadline = self.clock() + self.timeout
        while True:
            report = await self._report()
            found = report.get("flags")
            flags: dict[str, Any] = found if isinstance(found, dict) else {}
            source = flags.get("source")
            if report.get("stage") == stage and source == "live":
                return
            if self.clock() >= deadline:
                differences = flags.get("differences") or []
                detail = f"; differs in: {'; '.join(map(str, differences))}" if differences else ""
                raise ReplayError(
                    f"the target did not follow stage {stage!r} within {self.timeout:g} s: it "
                    f"reports stage {report.get('stage')!r} from {source or 'unknown'} flags"
                    f"{detail}"
                )
            await self.sleep(self.poll)

    async def _report(self) -> dict[str, Any]:
        try:
            response = await self.client.get("/_demo/stage")
        except httpx.HTTPError as error:
            raise ReplayError(f"cannot read the target's stage: {type(error).__name__}") from error
        if response.status_code != 200:
            raise ReplayError(
                f"the target does not report its flag stage (GET /_demo/stage: "
                f"{_error_text(response)})"
            )
        try:
            report = response.json()
        except ValueError:
            report = None
        if not isinstance(report, dict):
            raise ReplayError("the target's GET /_demo/stage did not answer a JSON object")
        return report


def _error_text(response: httpx.Response) -> str:
    try:
        payload = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    message = payload.get("error") if isinstance(payload, dict) else None
    return f"HTTP {response.status_code} {message or ''}".strip()
