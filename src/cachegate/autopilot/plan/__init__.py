"""The rollout plan as code: ordered stages, each with a minimum observation time and its gates.

The plan lives in `flags/rollout-plan.toml` beside the stage files (a stage's flag state is the
stage file of the same name). `load_plan` validates everything at load and raises `PlanError`
naming the file, the place and the fix, so a wrong plan never reaches Unleash.

One concept a module: `values` (durations, numbers, queries, `PlanError`), `gates` (a gate's
spec), `stages` (a plan of whole stages), `tracks` (a plan of per-layer tracks), `document`
(`Plan`, reading the file). The names below are the public API.
"""

from cachegate.autopilot.plan.document import (
    PLAN_FILE,
    Plan,
    default_plan_path,
    load_plan,
    parse_plan,
)
from cachegate.autopilot.plan.gates import GateKind, GateSpec, OnFail
from cachegate.autopilot.plan.stages import StagePlan
from cachegate.autopilot.plan.tracks import TrackPlan, TrackState
from cachegate.autopilot.plan.values import PlanError, parse_duration

__all__ = [
    "PLAN_FILE",
    "GateKind",
    "GateSpec",
    "OnFail",
    "Plan",
    "PlanError",
    "StagePlan",
    "TrackPlan",
    "TrackState",
    "default_plan_path",
    "load_plan",
    "parse_duration",
    "parse_plan",
]
