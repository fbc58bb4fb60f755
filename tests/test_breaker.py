"""The circuit breaker on an injected clock: open at the threshold, refuse during the cool-down,
one probe when half-open, closed again on success."""

from __future__ import annotations

import pytest

from cachegate.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def changes() -> list[BreakerState]:
    return []


@pytest.fixture
def breaker(clock: Clock, changes: list[BreakerState]) -> CircuitBreaker:
    return CircuitBreaker(failure_threshold=3, cooldown=2.0, clock=clock, on_change=changes.append)


def open_it(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.failure_threshold):
        assert breaker.allow()
        breaker.failure()


def test_opens_at_the_threshold(breaker: CircuitBreaker, changes: list[BreakerState]) -> None:
    for _ in range(2):
        assert breaker.allow()
        breaker.failure()
        assert breaker.state is BreakerState.CLOSED
    assert breaker.allow()
    breaker.failure()
    assert breaker.state is BreakerState.OPEN
    assert changes == [BreakerState.OPEN]


def test_only_consecutive_failures_count(breaker: CircuitBreaker) -> None:
    for _ in range(5):
        breaker.failure()
        breaker.failure()
        breaker.success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow()


def test_rejects_during_the_cool_down(breaker: CircuitBreaker, clock: Clock) -> None:
    open_it(breaker)
    opened = clock.now
    for step in range(10):
        clock.now = opened + step * 0.199
        assert not breaker.allow()
        assert breaker.state is BreakerState.OPEN
    clock.now = opened + 2.0
    assert breaker.state is BreakerState.HALF_OPEN


def test_half_open_lets_exactly_one_probe_through(
    breaker: CircuitBreaker, clock: Clock, changes: list[BreakerState]
) -> None:
    open_it(breaker)
    clock.now += 2.0
    assert breaker.allow()  # the probe
    for _ in range(5):
        assert not breaker.allow()  # others wait for its answer
    clock.now += 10.0
    assert not breaker.allow()  # still only one probe, however long it takes
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN]


def test_a_successful_probe_closes(
    breaker: CircuitBreaker, clock: Clock, changes: list[BreakerState]
) -> None:
    open_it(breaker)
    clock.now += 2.5
    assert breaker.allow()
    breaker.success()
    assert breaker.state is BreakerState.CLOSED
    assert all(breaker.allow() for _ in range(5))
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]
    # and the failure count started over
    breaker.failure()
    breaker.failure()
    assert breaker.state is BreakerState.CLOSED


def test_a_failed_probe_opens_for_a_new_cool_down(breaker: CircuitBreaker, clock: Clock) -> None:
    open_it(breaker)
    clock.now += 2.0
    assert breaker.allow()
    breaker.failure()
    assert breaker.state is BreakerState.OPEN
    clock.now += 1.9
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.allow()
    breaker.success()
    assert breaker.state is BreakerState.CLOSED


@pytest.mark.parametrize(("threshold", "cooldown"), [(0, 1.0), (1, 0.0), (3, -1.0)])
def test_rejects_nonsense_settings(threshold: int, cooldown: float) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=threshold, cooldown=cooldown)


def test_every_subscriber_hears_every_change(
    breaker: CircuitBreaker, clock: Clock, changes: list[BreakerState]
) -> None:
    later: list[BreakerState] = []
    breaker.subscribe(later.append)
    open_it(breaker)
    clock.now += 2.0
    assert breaker.allow()
    breaker.success()
    expected = [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]
    assert changes == later == expected
