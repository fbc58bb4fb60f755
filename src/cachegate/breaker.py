"""A circuit breaker: stop asking a failing store for a cool-down, then probe it once."""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum


class BreakerState(StrEnum):
    """Closed: calls go through. Open: calls are refused. Half-open: one probe goes through."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Opens after `failure_threshold` consecutive failures; closes on the first success after.

    Every listener (`on_change`, then each one added by `subscribe`) hears each change of
    state: a store subscribes its metrics to the breaker it is given, whoever built it.
    """

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        cooldown: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        if failure_threshold < 1 or cooldown <= 0:
            raise ValueError("failure_threshold must be >= 1 and cooldown > 0")
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self._clock = clock
        self._listeners: list[Callable[[BreakerState], None]] = []
        if on_change is not None:
            self._listeners.append(on_change)
        self._failures = 0
        self._opened_at = 0.0
        self._state = BreakerState.CLOSED
        self._probing = False

    def subscribe(self, listener: Callable[[BreakerState], None]) -> None:
        """Call `listener(state)` on every change of state from now on."""
        self._listeners.append(listener)

    @property
    def state(self) -> BreakerState:
        """The current state (an open breaker past its cool-down reports half-open)."""
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.cooldown:
            return BreakerState.HALF_OPEN
        return self._state

    def allow(self) -> bool:
        """Whether a call may go to the store now; in half-open, only one probe at a time."""
        if self._state is BreakerState.CLOSED:  # the common case, without the clock
            return True
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            self._set(BreakerState.HALF_OPEN)
            return True
        return False

    def success(self) -> None:
        """Record a successful call: closes the breaker."""
        self._failures = 0
        self._probing = False
        if self._state is not BreakerState.CLOSED:
            self._set(BreakerState.CLOSED)

    def failure(self) -> None:
        """Record a failed call: opens the breaker at the threshold or when a probe fails."""
        self._failures += 1
        probe_failed = self._probing
        self._probing = False
        if probe_failed or self._failures >= self.failure_threshold:
            self._opened_at = self._clock()
            self._set(BreakerState.OPEN)

    def _set(self, state: BreakerState) -> None:
        changed = state is not self._state
        self._state = state
        if changed:
            for listener in self._listeners:
                listener(state)
