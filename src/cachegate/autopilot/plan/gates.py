"""The gates of a rollout plan: their kinds, their spec, and reading the `[gates.<name>]` tables.

What a gate's figures mean and how they become a verdict is `cachegate.autopilot.gates`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cachegate.autopilot.plan.values import (
    PlanError,
    no_unknown,
    number,
    parse_duration,
    query,
    whole_number,
)

__all__ = [
    "GateKind",
    "GateSpec",
    "OnFail",
    "check_rollback_to",
    "gate_list",
    "read_gates",
]


class GateKind(StrEnum):
    """How a gate turns Prometheus figures into a verdict (see `gates.py`)."""

    AGREEMENT = "agreement"
    PROPORTION = "proportion"
    THRESHOLD = "threshold"
    COMPARISON = "comparison"
    SAMPLE = "sample"


class OnFail(StrEnum):
    """What a failing gate does once it reached its failure limit."""

    ROLLBACK = "rollback"
    HOLD = "hold"


@dataclass(frozen=True, slots=True)
class GateSpec:
    """One gate: its queries, bounds and the handling of failure. Unused fields stay None."""

    name: str
    kind: GateKind
    window: float
    failure_limit: int = 1
    on_fail: OnFail = OnFail.HOLD
    min_sample: int = 0
    confidence: float = 0.95
    layer: str | None = None
    max_excess: float | None = None
    events: str | None = None
    total: str | None = None
    value: str | None = None
    count: str | None = None
    min: float | None = None
    max: float | None = None
    max_increase: float | None = None
    slack: float = 0.0
    rollback_to: str | None = None
    """Where a rollback on this gate goes when that stage is earlier than the current one: e.g.
    an L1 gate back to the last stage where L1 does not serve, leaving L2 serving. Elsewhere,
    and when None: the stage before."""


_COMMON = {"kind", "window", "failure_limit", "on_fail", "min_sample", "rollback_to"}
_KIND_KEYS: dict[GateKind, tuple[set[str], set[str]]] = {
    # kind: (required, optional) besides the common keys
    GateKind.AGREEMENT: ({"layer", "max_excess"}, {"confidence"}),
    GateKind.PROPORTION: ({"events", "total"}, {"min", "max", "confidence"}),
    GateKind.THRESHOLD: ({"value"}, {"min", "max"}),
    GateKind.COMPARISON: ({"value", "count", "max_increase"}, {"slack"}),
    GateKind.SAMPLE: ({"count", "min_sample"}, set()),
}
_NUMBERS = ("max_excess", "min", "max", "max_increase", "slack", "confidence")
_QUERIES = ("events", "total", "value", "count")


def read_gates(raw: Any, source: str) -> dict[str, GateSpec]:
    """The plan's `[gates]` table: every gate by name."""
    if not isinstance(raw, dict):
        raise PlanError(f"{source}: [gates] must be a table of gate tables")
    return {name: _gate(name, spec, source) for name, spec in raw.items()}


def gate_list(
    raw: Mapping[str, Any], gates: Mapping[str, GateSpec], where: str
) -> tuple[GateSpec, ...]:
    """The gates a stage or a state names in its 'gates' list, each defined in `[gates]`."""
    names = raw.get("gates", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise PlanError(f"{where}: 'gates' must be a list of gate names")
    missing = [n for n in names if n not in gates]
    if missing:
        raise PlanError(
            f"{where}: no [gates.{missing[0]}] defined (defined: {', '.join(sorted(gates))})"
        )
    return tuple(gates[n] for n in names)


def check_rollback_to(
    gates: Iterable[GateSpec], names: Sequence[str], where: str, among: str
) -> None:
    """Refuse a gate whose `rollback_to` is not in `names` (`among` says what they are)."""
    for gate in gates:
        if gate.rollback_to is not None and gate.rollback_to not in names:
            raise PlanError(
                f"{where}[gates.{gate.name}] rollback_to {gate.rollback_to!r} is no {among} "
                f"({', '.join(names)})"
            )


def _gate(name: str, raw: Any, source: str) -> GateSpec:
    where = f"{source}: [gates.{name}]"
    if not isinstance(raw, dict):
        raise PlanError(f"{where} must be a table")
    try:
        kind = GateKind(str(raw.get("kind")))
    except ValueError:
        kinds = ", ".join(k.value for k in GateKind)
        raise PlanError(
            f"{where}: 'kind' must be one of {kinds}, not {raw.get('kind')!r}"
        ) from None
    required, optional = _KIND_KEYS[kind]
    no_unknown(raw, _COMMON | required | optional, where)
    absent = sorted(required - set(raw))
    if absent:
        raise PlanError(f"{where}: a {kind.value} gate needs {', '.join(absent)}")
    if "window" not in raw:
        raise PlanError(f"{where}: every gate needs a 'window' (its analysis interval)")
    window = parse_duration(raw["window"], f"{where}: window")
    if window <= 0:
        raise PlanError(f"{where}: 'window' must be longer than 0s")
    try:
        on_fail = OnFail(raw.get("on_fail", "hold"))
    except ValueError:
        raise PlanError(f"{where}: 'on_fail' must be 'rollback' or 'hold'") from None
    failure_limit = whole_number(raw.get("failure_limit", 1), f"{where}: failure_limit", minimum=1)
    min_sample = whole_number(raw.get("min_sample", 0), f"{where}: min_sample", minimum=0)
    numbers = {key: number(raw[key], f"{where}: {key}") for key in _NUMBERS if key in raw}
    confidence = numbers.get("confidence", 0.95)
    if not 0.5 <= confidence < 1.0:
        raise PlanError(f"{where}: 'confidence' must be in [0.5, 1), e.g. 0.95")
    if kind in (GateKind.PROPORTION, GateKind.THRESHOLD) and ("min" in raw) == ("max" in raw):
        raise PlanError(f"{where}: give exactly one of 'min' or 'max'")
    for key in ("max_excess", "min", "max"):
        rate_kind = kind in (GateKind.AGREEMENT, GateKind.PROPORTION)
        if rate_kind and key in numbers and not 0.0 <= numbers[key] <= 1.0:
            raise PlanError(f"{where}: '{key}' is a rate and must be between 0 and 1")
    queries = {key: query(raw[key], f"{where}: {key}") for key in _QUERIES if key in raw}
    layer = raw.get("layer")
    if layer is not None and layer not in ("query_result", "embedding"):
        raise PlanError(f"{where}: 'layer' must be 'query_result' (L1) or 'embedding' (L2)")
    if kind is GateKind.AGREEMENT and min_sample < 1:
        raise PlanError(f"{where}: an agreement gate needs 'min_sample' >= 1")
    return GateSpec(
        name=name,
        kind=kind,
        window=window,
        failure_limit=failure_limit,
        on_fail=on_fail,
        rollback_to=_rollback_to(raw.get("rollback_to"), where),
        min_sample=min_sample,
        confidence=confidence,
        layer=layer,
        max_excess=numbers.get("max_excess"),
        events=queries.get("events"),
        total=queries.get("total"),
        value=queries.get("value"),
        count=queries.get("count"),
        min=numbers.get("min"),
        max=numbers.get("max"),
        max_increase=numbers.get("max_increase"),
        slack=numbers.get("slack", 0.0),
    )


def _rollback_to(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise PlanError(f"{where}: 'rollback_to' must be the name of an earlier stage")
    return value
