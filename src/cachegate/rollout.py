"""Modes, the per-request `Decision`, and the contextvar that carries it through the app.

The middleware decides once per request and stores the decision here, so code inside the app (the
L2 embedder) follows the same decision without being handed it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class Mode(StrEnum):
    """What one cache layer does for one request."""

    OFF = "off"
    """Not consulted at all: the fresh path only."""
    SHADOW = "shadow"
    """Dark launch: looked up, compared with the fresh answer, filled; fresh is served."""
    SERVE = "serve"
    """Hits are served."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The modes of both layers for one request, and whether a hit is verified in the background."""

    l1: Mode = Mode.OFF
    l2: Mode = Mode.OFF
    verify: bool = False


OFF = Decision()
"""Every layer off: what unknown flags, a kill switch or a request without tenant get."""


class Rollout(Protocol):
    """Decides the layers' modes for a request of `tenant` (None: not in any rollout)."""

    def decide(self, tenant: str | None) -> Decision:
        """Return this request's decision; must never raise."""
        ...


@dataclass(frozen=True, slots=True)
class StaticRollout:
    """The same decision for every tenant: the embedded default and a handy test double."""

    decision: Decision = Decision(l1=Mode.SERVE, l2=Mode.SERVE)

    def decide(self, tenant: str | None) -> Decision:
        """Every request with a tenant gets the configured decision; one without gets `OFF`."""
        return OFF if tenant is None else self.decision


_current: ContextVar[tuple[Decision, str | None] | None] = ContextVar(
    "cachegate_decision", default=None
)
"""The request's decision and tenant, in one variable: one set and one reset per request."""


def current_decision() -> Decision | None:
    """The decision of the request being handled, or None outside a CacheGate request."""
    current = _current.get()
    return None if current is None else current[0]


def current_tenant() -> str | None:
    """The tenant of the request being handled (the L2 embedder's default scope), or None."""
    current = _current.get()
    return None if current is None else current[1]


Tokens = Token[tuple[Decision, str | None] | None]


def enter_decision(decision: Decision, tenant: str | None = None) -> Tokens:
    """Make `decision` (and `tenant`) current; undo with `exit_decision` (the middleware's path)."""
    return _current.set((decision, tenant))


def exit_decision(tokens: Tokens) -> None:
    """Restore what was current before `enter_decision`."""
    _current.reset(tokens)


@contextmanager
def using_decision(decision: Decision, tenant: str | None = None) -> Iterator[None]:
    """Make `decision` (and `tenant`) the current ones for the duration of the block."""
    tokens = enter_decision(decision, tenant)
    try:
        yield
    finally:
        exit_decision(tokens)
