"""Tallies: counts kept off the lock reach their Prometheus series exactly, once."""

from __future__ import annotations

import asyncio
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram

from cachegate import tally
from cachegate.metrics import Metrics, RouteMetrics
from cachegate.tally import Tallies
from cachegate.vocabulary import BypassReason, CachePath

BOUNDS = (0.001, 0.01, 0.1, 1.0)


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in registry.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


@given(
    st.lists(
        st.one_of(
            st.sampled_from(BOUNDS),  # on a bound: that bucket, as `observe` counts it
            st.floats(min_value=0, max_value=5, allow_nan=False),
        ),
        max_size=60,
    ),
    st.integers(min_value=1, max_value=5),
)
def test_a_flushed_histogram_reads_as_if_observed(values: list[float], flushes: int) -> None:
    direct, tallied = CollectorRegistry(), CollectorRegistry()
    observed = Histogram("d", "d", ["path"], buckets=BOUNDS, registry=direct).labels("hit")
    child = Histogram("d", "d", ["path"], buckets=BOUNDS, registry=tallied).labels("hit")
    tallies = Tallies()
    histogram = tallies.histogram(child)
    for index, value in enumerate(values):
        observed.observe(value)
        histogram.observe(value)
        if index % flushes == 0:
            tallies.flush()
    tallies.flush()
    tallies.flush()  # nothing new: adds nothing
    assert _samples(tallied) == pytest.approx(_samples(direct))


def test_a_scrape_sees_every_count_so_far() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry=registry, routes=["/ask"])
    counts = RouteMetrics(metrics, "/ask")
    counts.bypass(BypassReason.MODE_OFF)
    counts.bypass(BypassReason.MODE_OFF)
    counts.served_from_cache(0.25)
    counts.finished(CachePath.HIT, 0.002)

    def value(name: str, labels: dict[str, str]) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("cachegate_bypasses_total", {"reason": "mode_off"}) == 2
    assert value("cachegate_cache_hits_total", {"cache_layer": "query_result"}) == 1
    assert value("cachegate_cost_avoided_dollars_total", {"cache_layer": "query_result"}) == 0.25
    labels = {"route": "/ask", "path": "hit"}
    assert value("cachegate_query_duration_seconds_count", labels) == 1
    assert value("cachegate_query_duration_seconds_bucket", {**labels, "le": "0.001"}) == 0
    assert value("cachegate_query_duration_seconds_bucket", {**labels, "le": "0.0025"}) == 1
    # a second scrape counts nothing twice
    assert value("cachegate_bypasses_total", {"reason": "mode_off"}) == 2


@pytest.mark.anyio
async def test_counts_reach_their_series_without_a_scrape(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tally, "FLUSH_DELAY", 0.01)
    counter = Counter("c", "c", registry=None)
    tallies = Tallies()
    counted = tallies.counter(counter)
    counted.value += 3
    tallies.touch()
    assert counter._value.get() == 0  # not yet: the flush is a timer on this loop
    for _ in range(500):
        await asyncio.sleep(0.01)
        if counter._value.get():
            break
    assert counter._value.get() == 3
    counted.value += 1
    tallies.touch()  # the timer re-arms after each flush
    for _ in range(500):
        await asyncio.sleep(0.01)
        if counter._value.get() == 4:
            break
    assert counter._value.get() == 4


def test_flushes_from_another_thread_lose_and_double_nothing() -> None:
    counter = Counter("c", "c", registry=None)
    tallies = Tallies()
    counted = tallies.counter(counter)
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            tallies.flush()

    scrapers = [threading.Thread(target=scrape) for _ in range(2)]
    for thread in scrapers:
        thread.start()
    for _ in range(200_000):
        counted.value += 1
    stop.set()
    for thread in scrapers:
        thread.join()
    tallies.flush()
    assert counter._value.get() == 200_000
