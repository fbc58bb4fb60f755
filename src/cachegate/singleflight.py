"""One computation for concurrent identical misses in a process."""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """The first caller of a key leads and computes; the others wait for its result.

    The key must include the generations the lookup read, so a request that arrives after an
    invalidation never joins a computation that started before it.
    """

    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Future[T | None]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def lead(self, key: str) -> bool:
        """Become the leader of `key` if no computation of it is running."""
        if key in self._flights:
            return False
        self._flights[key] = asyncio.get_running_loop().create_future()
        return True

    async def wait(self, key: str, patience: float) -> T | None:
        """The leader's result, or None when it had none to share.

        Raises `TimeoutError` when the leader takes longer than `patience` seconds.
        """
        future = self._flights.get(key)
        if future is None:
            return None
        return await asyncio.wait_for(asyncio.shield(future), patience)

    def finish(self, key: str, result: T | None) -> None:
        """Hand the leader's result (None: nothing shareable) to the waiters."""
        future = self._flights.pop(key, None)
        if future is not None and not future.done():
            future.set_result(result)
