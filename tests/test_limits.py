"""`Limits`: a cache's tunables are checked at configuration, and the gate uses them."""

from __future__ import annotations

import pytest

from cachegate import CacheGate, Limits, Policy, trusted_header


@pytest.mark.parametrize(
    "bad",
    [
        {"max_body_bytes": 0},
        {"max_header_bytes": -1},
        {"max_entry_bytes": 0},
        {"single_flight_wait": 0.0},
        {"verify_timeout": -1.0},
        {"verify_concurrency": -1},
        {"noise_sample_rate": 1.5},
        {"noise_sample_rate": -0.1},
    ],
)
def test_a_bad_limit_is_a_configuration_error(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Limits(**bad)  # type: ignore[arg-type]


def test_the_gate_keeps_the_limits_it_is_given() -> None:
    policy = Policy("/q", tenant=trusted_header("x-tenant"))
    assert CacheGate(policies=[policy]).limits == Limits()
    limits = Limits(max_entry_bytes=64, single_flight_wait=0.5)
    gate = CacheGate(policies=[policy], limits=limits)
    assert gate.limits.max_entry_bytes == 64
    assert gate.results.max_entry_bytes == 64


def test_the_old_keywords_are_gone() -> None:
    """The tunables moved into `Limits`: passing one to the gate is an error, not ignored."""
    policy = Policy("/q", tenant=trusted_header("x-tenant"))
    with pytest.raises(TypeError):
        CacheGate(policies=[policy], max_body_bytes=10)  # type: ignore[call-arg]
