"""What a test does when a component it needs (a server, a binary) is not on the machine."""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    """Whether this run is CI's (`CI=true`), read when asked so tests can change it."""
    return os.environ.get("CI", "").lower() == "true"


def missing(component: str) -> None:
    """Skip locally, fail under CI: a missing component is never silently skipped in CI."""
    message = f"{component} is not available"
    if in_ci():
        pytest.fail(message + " (CI=true: missing components fail)")
    pytest.skip(message)
