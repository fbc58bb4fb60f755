"""Comparing cached (candidate) answers with fresh (control) ones: outcomes, comparators and
the capped mismatch log, in github/scientist's vocabulary.

Comparators decide `match` or `mismatch`; anything they raise is an `error`, never a failed
request. Mismatches are kept in a capped log without content: digests, lengths and the JSON
field paths that differ, since answers hold patient data.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol


class Outcome(StrEnum):
    """The result of one comparison."""

    MATCH = "match"
    MISMATCH = "mismatch"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Comparison:
    """An outcome and, for JSON, the paths of the fields that differ (never their values)."""

    outcome: Outcome
    differences: tuple[str, ...] = ()


class Comparator(Protocol):
    """Compares a cached body with a fresh one."""

    def __call__(self, cached: bytes, fresh: bytes) -> Comparison:
        """Return `match` or `mismatch`; raising counts as `error`."""
        ...


MATCH = Comparison(Outcome.MATCH)


@dataclass(frozen=True)
class ExactComparator:
    """Byte-for-byte equality: right for deterministic endpoints."""

    def __call__(self, cached: bytes, fresh: bytes) -> Comparison:
        """Match when the bytes are equal."""
        return MATCH if cached == fresh else Comparison(Outcome.MISMATCH)


@dataclass(frozen=True)
class JsonComparator:
    """JSON equality ignoring volatile fields (ids, timestamps) named by key anywhere."""

    ignore: frozenset[str] = frozenset()

    def __call__(self, cached: bytes, fresh: bytes) -> Comparison:
        """Match when the documents agree outside the ignored fields."""
        differences = tuple(_diff(json.loads(cached), json.loads(fresh), "$", self.ignore))
        return Comparison(Outcome.MISMATCH, differences) if differences else MATCH


def _diff(a: Any, b: Any, path: str, ignore: frozenset[str]) -> Iterable[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key in ignore:
                continue
            if key not in a or key not in b:
                yield f"{path}.{key}"
            else:
                yield from _diff(a[key], b[key], f"{path}.{key}", ignore)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            yield f"{path}[]"
            return
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            yield from _diff(x, y, f"{path}[{index}]", ignore)
    elif a != b or type(a) is not type(b):
        yield path


_SPACE = re.compile(r"\s+")


def _normal_text(data: bytes) -> str:
    return _SPACE.sub(" ", data.decode("utf-8", "replace")).strip().casefold()


@dataclass(frozen=True)
class TextComparator:
    """Equality after collapsing whitespace and case-folding."""

    def __call__(self, cached: bytes, fresh: bytes) -> Comparison:
        """Match when the normalised texts are equal."""
        same = _normal_text(cached) == _normal_text(fresh)
        return MATCH if same else Comparison(Outcome.MISMATCH)


@dataclass(frozen=True)
class SimilarityComparator:
    """Jaccard similarity of word bigrams at or above `threshold`: for generated text."""

    threshold: float = 0.8

    def __call__(self, cached: bytes, fresh: bytes) -> Comparison:
        """Match when the texts share enough word bigrams."""
        a, b = _shingles(_normal_text(cached)), _shingles(_normal_text(fresh))
        similarity = 1.0 if not a and not b else len(a & b) / len(a | b)
        return MATCH if similarity >= self.threshold else Comparison(Outcome.MISMATCH)


def _shingles(text: str) -> set[tuple[str, str]]:
    words = text.split(" ")
    return set(itertools.pairwise(words)) or {(text, "")}


def compare(comparator: Comparator, cached: bytes, fresh: bytes) -> Comparison:
    """Run a comparator; whatever it raises becomes an `error` outcome."""
    try:
        return comparator(cached, fresh)
    except Exception:
        return Comparison(Outcome.ERROR)


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One recorded mismatch, without content."""

    at: float
    route: str
    kind: str
    cached_sha256: str
    fresh_sha256: str
    cached_length: int
    fresh_length: int
    differences: tuple[str, ...]


class MismatchLog:
    """The most recent mismatches, capped, for inspection."""

    def __init__(self, capacity: int = 100, clock: Callable[[], float] = time.time) -> None:
        self._items: deque[Mismatch] = deque(maxlen=capacity)
        self._clock = clock

    def record(
        self, *, route: str, kind: str, cached: bytes, fresh: bytes, comparison: Comparison
    ) -> None:
        """Keep digests, lengths and differing paths of one mismatch."""
        self._items.append(
            Mismatch(
                at=self._clock(),
                route=route,
                kind=kind,
                cached_sha256=hashlib.sha256(cached).hexdigest(),
                fresh_sha256=hashlib.sha256(fresh).hexdigest(),
                cached_length=len(cached),
                fresh_length=len(fresh),
                differences=comparison.differences[:20],
            )
        )

    def recent(self) -> list[Mismatch]:
        """Recorded mismatches, oldest first."""
        return list(self._items)
