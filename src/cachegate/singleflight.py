"""One computation for concurrent identical misses in a process, whatever the store does.

A waiter takes a leader's answer only when that answer cannot predate a write its client saw
succeed: either the flight's key includes the generations the waiter read itself (`lead`), or
the computation starts after the waiter arrived (`follow`, for when the store gave no
generations). A flight whose leader has run for longer than the waiters' patience stops
collecting waiters: a hung leader costs its own request, not every later identical one.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(eq=False)
class Flight(Generic[T]):
    """One computation of `key`; `started` is None while it is queued behind a running one."""

    key: str
    future: asyncio.Future[T | None]
    started: float | None = field(default=None)


class SingleFlight(Generic[T]):
    """The first caller of a key leads and computes; the others wait for its result."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._running: dict[str, Flight[T]] = {}
        self._queued: dict[str, Flight[T]] = {}
        self._clock = clock

    def __len__(self) -> int:
        return len(self._running) + len(self._queued)

    def _new(self, key: str, started: float | None) -> Flight[T]:
        return Flight(key, asyncio.get_running_loop().create_future(), started)

    def lead(self, key: str, patience: float = math.inf) -> Flight[T] | None:
        """Lead `key` unless a computation of it that started less than `patience` seconds
        ago is running (then None: wait for it). The key must include the generations the
        caller read, so a request that arrives after an invalidation never joins a
        computation that started before it."""
        running = self._running.get(key)
        if running is not None and not self._overran(running, patience):
            return None
        flight = self._new(key, self._clock())
        self._running[key] = flight
        return flight

    def _overran(self, flight: Flight[T], patience: float) -> bool:
        return flight.started is not None and self._clock() - flight.started >= patience

    async def wait(self, key: str, patience: float) -> T | None:
        """The running leader's result, or None when it had none to share.

        Raises `TimeoutError` once the leader has run for `patience` seconds.
        """
        flight = self._running.get(key)
        if flight is None:
            return None
        started = flight.started if flight.started is not None else self._clock()
        remaining = max(started + patience - self._clock(), 0.0)
        return await asyncio.wait_for(asyncio.shield(flight.future), remaining)

    def follow(self, key: str) -> tuple[Flight[T], bool]:
        """Join the computation of `key` that starts next: (flight, whether the caller leads).

        With none running, the caller leads one that starts now; otherwise the caller joins
        (or leads) the one queued behind it, which starts only when the running one ends.
        """
        queued = self._queued.get(key)
        if queued is not None:
            return queued, False
        if key not in self._running:
            flight = self._running[key] = self._new(key, self._clock())
        else:
            flight = self._queued[key] = self._new(key, None)
        return flight, True

    async def start(self, flight: Flight[T], patience: float) -> None:
        """A queued leader's turn: wait (at most `patience`) for the running one, then run."""
        if flight.started is not None:
            return
        running = self._running.get(flight.key)
        if running is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(running.future), patience)
        if self._queued.get(flight.key) is flight:
            del self._queued[flight.key]
        flight.started = self._clock()
        self._running[flight.key] = flight

    async def join(self, flight: Flight[T], patience: float) -> T | None:
        """A follower's wait for `flight`'s result; `TimeoutError` after `patience` seconds."""
        return await asyncio.wait_for(asyncio.shield(flight.future), patience)

    def finish(self, flight: Flight[T], result: T | None) -> None:
        """Hand the leader's result (None: nothing shareable) to the waiters."""
        for table in (self._running, self._queued):
            if table.get(flight.key) is flight:
                del table[flight.key]
        if not flight.future.done():
            flight.future.set_result(result)


async def waited(waiting: Awaitable[T], count: Callable[[str], None]) -> T | None:
    """A waiter's result: what its leader shared, or None (on a timeout too: compute on your
    own); `count` hears how the wait ended (`shared`, `not_shared`, `timeout`)."""
    try:
        shared = await waiting
    except TimeoutError:
        count("timeout")
        return None
    count("not_shared" if shared is None else "shared")
    return shared
