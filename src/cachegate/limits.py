"""`Limits`: one cache's tunables, grouped, with sane defaults and checked at configuration."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    """How much a cache reads, stores, waits and re-computes.

    Request bodies over `max_body_bytes` and header blocks over `max_header_bytes` bypass the
    cache (the app still gets the whole request); entries over `max_entry_bytes` are served, not
    stored. Waiters on an identical computation give up after `single_flight_wait` seconds and
    compute on their own. Background verification runs at most `verify_concurrency`
    re-computations at once, each within `verify_timeout` seconds; in shadow mode
    `noise_sample_rate` of the requests to re-run-safe routes are computed twice to measure the
    answers' own noise.
    """

    max_body_bytes: int = 1024 * 1024
    max_header_bytes: int = 16 * 1024
    max_entry_bytes: int = 1024 * 1024
    single_flight_wait: float = 5.0
    verify_concurrency: int = 4
    verify_timeout: float = 10.0
    noise_sample_rate: float = 0.01

    def __post_init__(self) -> None:
        if min(self.max_body_bytes, self.max_header_bytes, self.max_entry_bytes) <= 0:
            raise ValueError("size limits must be positive")
        if self.single_flight_wait <= 0 or self.verify_timeout <= 0:
            raise ValueError("single_flight_wait and verify_timeout must be positive")
        if self.verify_concurrency < 0:
            raise ValueError("verify_concurrency must not be negative")
        if not 0.0 <= self.noise_sample_rate <= 1.0:
            raise ValueError("noise_sample_rate must be between 0 and 1")
