"""Track plans (one order per layer) are validated at load with errors that say what to fix,
and a plan of whole stages keeps loading and running as before."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from cachegate.autopilot.controller import Controller
from cachegate.autopilot.plan import PlanError, default_plan_path, load_plan, parse_plan
from cachegate.autopilot.tracks import TrackController

TRACKS_FILE = default_plan_path().parent / "rollout-tracks.toml"


def document() -> dict[str, Any]:
    return {
        "version": 1,
        "tracks": [
            {
                "name": "l2",
                "layer": "l2",
                "states": [
                    {"name": "off", "flags_from": "off", "gates": ["traffic"]},
                    {"name": "shadow", "flags_from": "dark-launch", "gates": ["l2-agree"]},
                    {"name": "serve", "flags_from": "l2", "gates": ["store"]},
                ],
            },
            {
                "name": "l1",
                "layer": "l1",
                "states": [
                    {"name": "off", "flags_from": "off", "gates": ["traffic"]},
                    {"name": "shadow", "flags_from": "dark-launch", "gates": ["l1-agree"]},
                    {
                        "name": "l1-10",
                        "flags_from": "l1-10",
                        "requires": "l2:serve",
                        "gates": ["l1-agree"],
                    },
                ],
            },
        ],
        "gates": {
            "traffic": {"kind": "sample", "count": "r[$window]", "min_sample": 1, "window": "1m"},
            "l1-agree": {
                "kind": "agreement",
                "layer": "query_result",
                "max_excess": 0.01,
                "min_sample": 10,
                "window": "5m",
                "rollback_to": "shadow",
            },
            "l2-agree": {
                "kind": "agreement",
                "layer": "embedding",
                "max_excess": 0.01,
                "min_sample": 10,
                "window": "5m",
            },
            "store": {"kind": "threshold", "value": "s[$window]", "max": 0, "window": "1m"},
        },
    }


def test_the_shipped_track_plan_loads_and_keeps_l1_serving_behind_l2() -> None:
    plan = load_plan(TRACKS_FILE)
    assert plan.stages == ()
    assert [(t.name, t.layer) for t in plan.tracks] == [("l2", "l2"), ("l1", "l1")]
    assert plan.track("l2").names == ("off", "shadow", "serve")
    assert plan.track("l1").names == ("off", "shadow", "l1-10", "l1-50", "l1-100")
    assert plan.track("l1").flags == (
        "cachegate.l1.shadow",
        "cachegate.l1.serve",
        "cachegate.l1.verify",
    )
    first_serving = plan.track("l1").states[2]
    assert first_serving.requires == ("l2", "serve")
    layers = {
        gate.layer for track in plan.tracks for s in track.states for gate in s.gates if gate.layer
    }
    assert layers == {"query_result", "embedding"}


def test_a_plan_of_whole_stages_is_unchanged_and_not_a_track_plan() -> None:
    plan = load_plan()
    assert plan.tracks == ()
    assert plan.names == ("off", "dark-launch", "l2", "l1-10", "l1-50", "l1-100")
    Controller(plan, reader=None, stages=None)  # type: ignore[arg-type]
    with pytest.raises(PlanError, match="no \\[\\[tracks\\]\\]"):
        TrackController(plan, reader=None, store=None)  # type: ignore[arg-type]


def test_a_minimal_track_plan_parses() -> None:
    plan = parse_plan(document(), environ={})
    with pytest.raises(PlanError, match="TrackController"):
        Controller(plan, reader=None, stages=None)  # type: ignore[arg-type]
    assert plan.track("l1").states[1].gates[0].rollback_to == "shadow"


def broken(change: Any) -> str:
    data = copy.deepcopy(document())
    change(data)
    with pytest.raises(PlanError) as error:
        parse_plan(data, source="plan.toml", environ={})
    return str(error.value)


def set_in(path: tuple[Any, ...], value: Any) -> Any:
    def change(data: dict[str, Any]) -> None:
        target: Any = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (set_in(("stages",), [{"name": "off"}]), "either \\[\\[stages\\]\\]"),
        (
            set_in(("tracks", 1, "flags"), ["cachegate.l1.bogus"]),
            "unknown flag 'cachegate.l1.bogus'",
        ),
        (set_in(("tracks", 1, "flags"), ["cachegate.l2.serve"]), "is not of layer l1"),
        (set_in(("tracks", 1, "flags"), ["cachegate.kill-switch"]), "belongs to no track"),
        (lambda d: d["tracks"].append({**d["tracks"][0], "name": "l2b"}), "layer l2 is in two"),
        (set_in(("tracks", 1, "name"), "l2"), "track 'l2' appears more than once"),
        (set_in(("tracks", 1, "layer"), "l3"), "'layer' must be 'l1' or 'l2'"),
        (set_in(("tracks", 1, "states", 1, "gates"), ["l2-agree"]), "judges layer embedding"),
        (set_in(("tracks", 0, "states", 1, "gates"), ["l1-agree"]), "judges layer query_result"),
        (set_in(("tracks", 1, "states", 1, "flags_from"), "nope"), "flags_from"),
        (set_in(("tracks", 1, "states", 1, "flags_from"), "off"), "set the same flags"),
        (set_in(("tracks", 1, "states", 2, "requires"), "l3:serve"), "'l3' is no other track"),
        (set_in(("tracks", 1, "states", 2, "requires"), "l1:off"), "'l1' is no other track"),
        (set_in(("tracks", 1, "states", 2, "requires"), "l2:on"), "track 'l2' has no state 'on'"),
        (set_in(("tracks", 1, "states", 2, "requires"), "serve"), "'track:state'"),
        (set_in(("tracks", 1, "states", 1, "gates"), ["none"]), "no \\[gates.none\\]"),
        (set_in(("tracks", 1, "states", 1, "name"), "off"), "state off appears more than once"),
        (set_in(("tracks", 1, "states"), [{"name": "off", "flags_from": "off"}]), "two"),
        (set_in(("tracks", 1, "colour"), "red"), "unknown key 'colour'"),
        (set_in(("tracks",), []), "list of \\[\\[tracks\\]\\]"),
        (set_in(("gates", "l1-agree", "rollback_to"), "l1-5"), "rollback_to 'l1-5' is no state"),
    ],
)
def test_validation_names_the_problem(change: Any, message: str) -> None:
    text = broken(change)
    assert "plan.toml" in text
    assert re.search(message, text), text


def test_the_track_plan_file_is_a_plan_file(tmp_path: Path) -> None:
    text = TRACKS_FILE.read_text(encoding="utf-8").replace('layer = "l1"', 'layer = "l2"')
    bad = tmp_path / "plan.toml"
    bad.write_text(text, encoding="utf-8")
    with pytest.raises(PlanError, match="l1-agreement\\] judges layer query_result"):
        load_plan(bad)
