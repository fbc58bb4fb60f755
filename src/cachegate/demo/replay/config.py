"""What a replay is pointed at and how much load it drives: the target (loopback only), the
stages, and the workload's shape."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from cachegate.demo.workload import (
    Catalog,
    Mix,
)
from cachegate.vocabulary import Served

TENANT_HEADER = "X-Workspace-ID"
PATHS = tuple(served.value for served in Served)
"""Values of `X-CacheGate`, in report order."""
NO_HEADER = "none"
DEFAULT_STAGES = ("off", "dark-launch", "l2", "l1-10", "l1-50", "l1-100")


class ReplayError(RuntimeError):
    """The replay cannot go on: the target or the flag server did not do what was asked."""


def check_loopback(url: str) -> str:
    """`url` without a trailing slash if its host is loopback; `ValueError` otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    host = parts.hostname
    loopback = host == "localhost"
    if not loopback:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
    if not loopback:
        raise ValueError(
            f"replay drives load at loopback targets only (127.0.0.0/8, ::1, localhost), "
            f"not {host!r}"
        )
    return url.rstrip("/")


@dataclass(frozen=True)
class ReplayConfig:
    """One replay: where, which stages, how much load per stage, and the workload's shape."""

    url: str = "http://127.0.0.1:8000"
    stages: tuple[str, ...] = DEFAULT_STAGES
    requests: int = 400
    """Requests (questions and writes) per stage at most."""
    duration: float = 120.0
    """Seconds per stage at most."""
    concurrency: int = 16
    seed: int = 1
    catalog: Catalog = field(default_factory=Catalog)
    mix: Mix = field(default_factory=Mix)
    namespace: str = "cachegate"
    query_cost: float = 0.017
    timeout: float = 30.0

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("at least one stage is needed")
        if self.requests < 1 or self.duration <= 0 or self.concurrency < 1:
            raise ValueError("requests, duration and concurrency must be positive")
        if self.requests > 1_000_000 or self.concurrency > 1024 or self.duration > 86_400:
            raise ValueError("requests, duration or concurrency out of range")
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")
