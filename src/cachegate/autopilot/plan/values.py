"""Reading the values of a rollout plan: durations, numbers, queries, named tables and stage
names, each refused with `PlanError` saying where it stands and how to fix it."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachegate.flags import UnknownStageError, stage_path

__all__ = [
    "Entry",
    "PlanError",
    "entries",
    "no_repeats",
    "no_unknown",
    "number",
    "parse_duration",
    "query",
    "stage_file",
    "whole_number",
]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class PlanError(ValueError):
    """The rollout plan is missing or wrong; the message says where and how to fix it."""


def parse_duration(text: object, where: str) -> float:
    """Seconds of a duration like `90s`, `15m`, `2h`; PlanError naming `where` otherwise."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    elif isinstance(text, str) and (match := _DURATION.match(text)):
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise PlanError(f"{where}: {text!r} is not a duration (write e.g. '90s', '15m', '2h')")
    if not math.isfinite(seconds) or seconds < 0:
        raise PlanError(f"{where}: a duration must be finite and >= 0, not {text!r}")
    return seconds


def whole_number(value: Any, where: str, *, minimum: int) -> int:
    """`value` if it is a whole number >= `minimum` (not a bool)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise PlanError(f"{where}: must be a whole number >= {minimum}, not {value!r}")
    return value


def number(value: Any, where: str) -> float:
    """`value` as a float if it is a finite number >= 0 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PlanError(f"{where}: must be a finite number, not {value!r}")
    if value < 0:
        raise PlanError(f"{where}: must be >= 0, not {value!r}")
    return float(value)


def query(value: Any, where: str) -> str:
    """`value` if it is a PromQL expression over `$window`."""
    if not isinstance(value, str) or not value.strip():
        raise PlanError(f"{where}: must be a PromQL expression")
    if "$window" not in value:
        raise PlanError(f"{where}: the query must use $window (the analysis window)")
    return value


def no_unknown(table: Mapping[str, Any], known: set[str], where: str) -> None:
    """Refuse a key of `table` outside `known` (a typo would otherwise be ignored)."""
    unknown = sorted(set(table) - known)
    if unknown:
        raise PlanError(
            f"{where}: unknown key {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(sorted(known))})"
        )


@dataclass(frozen=True, slots=True)
class Entry:
    """One named table of a list (a stage, a track, a state) and where it stands, for messages."""

    table: Mapping[str, Any]
    name: str
    where: str

    def observation(self) -> float:
        """Its `min_observation` in seconds (0 when absent)."""
        return parse_duration(
            self.table.get("min_observation", "0s"), f"{self.where}: min_observation"
        )


def entries(
    raw: Sequence[Any], known: set[str], within: str, kind: str, *, name: str = "a non-empty string"
) -> Iterator[Entry]:
    """Each table of `raw` (the `kind`s of `within`) with only `known` keys and its 'name'
    (which must be `name`), in order, each checked when it is reached."""
    for index, table in enumerate(raw):
        where = f"{within}{kind}s[{index}]"
        if not isinstance(table, dict):
            raise PlanError(f"{where} must be a table")
        no_unknown(table, known, where)
        value = table.get("name")
        if not isinstance(value, str) or not value:
            raise PlanError(f"{where}: 'name' must be {name}")
        yield Entry(table=table, name=value, where=f"{within}{kind} {value!r}")


def no_repeats(names: Sequence[str], what: str, where: str) -> None:
    """Refuse a name that stands twice in `names` (a `what`: stage, state)."""
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise PlanError(f"{where}: {what} {', '.join(repeated)} appears more than once")


def stage_file(name: str, where: str, environ: Mapping[str, str] | None) -> Path:
    """The stage file called `name`; PlanError listing the stages if there is none."""
    try:
        return stage_path(name, environ)
    except UnknownStageError as exc:
        raise PlanError(f"{where}: {exc}") from None
