"""The rollout plan file: the shipped plan loads; every mistake is refused with a clear error."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from cachegate.autopilot.plan import (
    GateKind,
    OnFail,
    PlanError,
    default_plan_path,
    load_plan,
    parse_duration,
    parse_plan,
)
from cachegate.flags import STAGES

SHIPPED = default_plan_path({})


def shipped() -> dict[str, Any]:
    return tomllib.loads(SHIPPED.read_text(encoding="utf-8"))


def test_the_shipped_plan_covers_every_stage_in_order() -> None:
    plan = load_plan(SHIPPED, {})
    assert plan.names == STAGES
    assert plan.stage("off").gates[0].name == "traffic"
    dark = plan.stage("dark-launch")
    kinds = {gate.name: gate.kind for gate in dark.gates}
    assert kinds["l1-agreement"] is GateKind.AGREEMENT
    assert kinds["would-be-hit-rate"] is GateKind.PROPORTION
    assert all(stage.min_observation > 0 for stage in plan.stages[:-1])
    by_name = {gate.name: gate for stage in plan.stages for gate in stage.gates}
    assert by_name["would-be-hit-rate"].min == 0.30
    assert by_name["would-be-hit-rate"].on_fail is OnFail.HOLD
    assert by_name["l1-agreement"].on_fail is OnFail.ROLLBACK
    assert plan.index("l1-10") == 3
    assert by_name["l1-agreement"].rollback_to == "l2"


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90.0), ("15m", 900.0), ("2h", 7200.0), ("250ms", 0.25), (3, 3.0)]
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text, "x") == seconds


@pytest.mark.parametrize("text", ["15 minutes", "-5s", "", True, None, "1y"])
def test_bad_durations(text: object) -> None:
    with pytest.raises(PlanError, match="x:"):
        parse_duration(text, "x")


def broken(change: Any) -> dict[str, Any]:
    data = shipped()
    change(data)
    return data


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(version=2), "'version' must be 1"),
        (lambda d: d.update(stages=[]), "at least one"),
        (lambda d: d["stages"].append({"name": "l1-75"}), "unknown flag stage 'l1-75'"),
        (lambda d: d["stages"].append({"name": "off"}), "more than once"),
        (lambda d: d["stages"][1]["gates"].append("nope"), r"no \[gates.nope\] defined"),
        (lambda d: d["stages"][1].update(min_observation="soon"), "not a duration"),
        (lambda d: d["stages"][1].update(extra=1), "unknown key 'extra'"),
        (lambda d: d["gates"]["l1-agreement"].update(kind="vibes"), "'kind' must be one of"),
        (lambda d: d["gates"]["l1-agreement"].pop("max_excess"), "needs max_excess"),
        (lambda d: d["gates"]["l1-agreement"].update(max_excess=5), "between 0 and 1"),
        (lambda d: d["gates"]["l1-agreement"].update(confidence=1.0), "confidence"),
        (lambda d: d["gates"]["l1-agreement"].update(failure_limit=0), "failure_limit"),
        (lambda d: d["gates"]["l1-agreement"].update(on_fail="panic"), "on_fail"),
        (lambda d: d["gates"]["l1-agreement"].update(layer="l3"), "'layer'"),
        (lambda d: d["gates"]["l1-agreement"].pop("window"), "'window'"),
        (lambda d: d["gates"]["store-failures"].update(min=0.1), "exactly one of 'min' or 'max'"),
        (lambda d: d["gates"]["traffic"].update(count="sum(x)"), r"must use \$window"),
        (lambda d: d["gates"]["breaker-open"].update(max=float("nan")), "finite"),
        (lambda d: d["gates"]["l1-agreement"].update(rollback_to="l1-75"), "no stage of the plan"),
    ],
)
def test_mistakes_are_refused_with_a_clear_error(change: Any, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        parse_plan(broken(change), source="plan.toml", environ={})


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="cannot read rollout plan"):
        load_plan(tmp_path / "missing.toml", {})
    bad = tmp_path / "bad.toml"
    bad.write_text("version = [", encoding="utf-8")
    with pytest.raises(PlanError, match="not valid TOML"):
        load_plan(bad, {})
