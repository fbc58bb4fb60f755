"""Lock-free tallies of Prometheus series, added to the series in batches.

prometheus_client takes a lock on every increment (about 0.45 µs; 0.75 µs an observation), which
is more than the rest of a bypassed request's bookkeeping. The request path counts into plain
numbers here instead, and `flush` adds what is new to the real series. Each tally is written by
one thread (its event loop's: a route's by the app's loop, a store's by the loop its client is
bound to) and flushes only read it, so no count is lost or counted twice; `Tallies` serialises
the flushes themselves (a scrape thread and the loop's timer may both flush).
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from bisect import bisect_left
from typing import Protocol

FLUSH_DELAY = 1.0
"""Seconds from the first unflushed count to its flush when nothing scrapes sooner: how far a
multiprocess worker's files (which other workers' scrapes read) may lag behind it."""


class _CounterChild(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class Tally:
    """A counter series' increments, kept as a plain number until flushed."""

    __slots__ = ("_flushed", "child", "value")

    def __init__(self, child: _CounterChild) -> None:
        self.child = child
        self.value: float = 0
        self._flushed: float = 0

    def flush(self) -> None:
        value = self.value
        if value != self._flushed:
            self.child.inc(value - self._flushed)
            self._flushed = value


class HistogramTally:
    """A histogram series' observations, kept as bucket counts and a sum until flushed.

    prometheus_client has no public call that adds many observations at once, so `flush` adds to
    the child's bucket and sum values directly (`_buckets`, `_sum`: the same values `observe`
    adds to, in every version this package accepts, in single- and multiprocess mode alike).
    The bucket bounds are the child's own (`_upper_bounds`, ending in +Inf), so the two can
    never disagree.
    """

    __slots__ = ("_bounds", "_flushed", "_flushed_sum", "child", "counts", "sum")

    def __init__(self, child: object) -> None:
        self.child = child
        self._bounds: tuple[float, ...] = tuple(child._upper_bounds)  # type: ignore[attr-defined]
        self.counts = [0] * len(self._bounds)
        self._flushed = [0] * len(self._bounds)
        self.sum = 0.0
        self._flushed_sum = 0.0

    def observe(self, amount: float) -> None:
        """One observation: the first bucket whose upper bound is at least `amount`."""
        self.counts[bisect_left(self._bounds, amount)] += 1
        self.sum += amount

    def flush(self) -> None:
        buckets = self.child._buckets  # type: ignore[attr-defined]
        for index, count in enumerate(self.counts):
            if count != self._flushed[index]:
                buckets[index].inc(count - self._flushed[index])
                self._flushed[index] = count
        total = self.sum
        if total != self._flushed_sum:
            self.child._sum.inc(total - self._flushed_sum)  # type: ignore[attr-defined]
            self._flushed_sum = total


class Tallies:
    """A group of tallies flushed together: at once on `flush`, and `FLUSH_DELAY` after the
    first count that `touch` reports, so counts reach their series within a second.

    The timer runs on the loop that counted; if that loop is closed first, the counts wait for
    the next `flush` (a scrape, `flush_all`, the gate's shutdown), which also re-arms the timer.
    """

    def __init__(self) -> None:
        self._members: list[Tally | HistogramTally] = []
        self._lock = threading.Lock()
        self._scheduled = False
        _LIVE.add(self)

    def counter(self, child: _CounterChild) -> Tally:
        """A new tally of a counter series (Prometheus child), flushed with this group."""
        tally = Tally(child)
        with self._lock:
            self._members.append(tally)
        return tally

    def histogram(self, child: object) -> HistogramTally:
        """A new tally of a histogram series (Prometheus child), flushed with this group."""
        tally = HistogramTally(child)
        with self._lock:
            self._members.append(tally)
        return tally

    def touch(self) -> None:
        """Something was counted: make sure a flush follows."""
        if self._scheduled:
            return
        self._scheduled = True
        try:
            asyncio.get_running_loop().call_later(FLUSH_DELAY, self.flush)
        except RuntimeError:  # no event loop: nothing would run the timer
            self.flush()

    def flush(self) -> None:
        """Add every tally's new counts to its series."""
        with self._lock:
            self._scheduled = False
            for member in self._members:
                member.flush()


_LIVE: weakref.WeakSet[Tallies] = weakref.WeakSet()


def flush_all() -> None:
    """Flush every group of tallies in this process (before its multiprocess files are read)."""
    for tallies in list(_LIVE):
        tallies.flush()
