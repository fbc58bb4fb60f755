"""`cachegate rollout status|step|run|rollback` over a plan of stages or of tracks.

The command line parses the arguments and loads the plan; this runs the action with the
controller the plan needs (`Controller` for whole stages, `TrackController` for tracks), both
seen as the decisions of one step: one for a stage plan, one per track for a track plan.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol, TextIO

from cachegate.autopilot import report
from cachegate.autopilot.controller import Controller
from cachegate.autopilot.decision import Action, Decision
from cachegate.autopilot.layers import UnleashLayers
from cachegate.autopilot.plan import Plan
from cachegate.autopilot.prometheus import PrometheusReader
from cachegate.autopilot.telemetry import AutopilotMetrics, default_autopilot_metrics
from cachegate.autopilot.tracks import TrackController
from cachegate.autopilot.unleash import UnleashStages
from cachegate.flags.admin import FlagAdminError

__all__ = ["DEFAULT_PROMETHEUS", "emit", "rollout_command", "stage_controller"]

OK, FAILED = 0, 1
DEFAULT_PROMETHEUS = "http://127.0.0.1:9090"


class _Steps(Protocol):
    """A controller as the command drives it: every call gives the decisions of one step."""

    @property
    def plan(self) -> Plan: ...

    def status(self) -> tuple[Decision, ...]: ...

    def step(self) -> tuple[Decision, ...]: ...

    def rollback(self, track: str | None, *, kill_switch: bool) -> Decision: ...


@dataclass(frozen=True, slots=True)
class _StageSteps:
    """A stage `Controller` as `_Steps`: one decision a step; a rollback names no track."""

    controller: Controller

    @property
    def plan(self) -> Plan:
        return self.controller.plan

    def status(self) -> tuple[Decision, ...]:
        return (self.controller.status(),)

    def step(self) -> tuple[Decision, ...]:
        return (self.controller.step(),)

    def rollback(self, track: str | None, *, kill_switch: bool) -> Decision:
        return self.controller.rollback(kill_switch=kill_switch)


def stage_controller(
    plan: Plan, args: argparse.Namespace, admin_token: str, *, dry_run: bool = False
) -> tuple[Controller, PrometheusReader]:
    """The controller of a stage plan over Prometheus (`args.prometheus`) and Unleash
    (`args.unleash_url`, `args.project`, `args.environment`), and its reader to close."""
    reader = PrometheusReader(args.prometheus or DEFAULT_PROMETHEUS)
    stages = UnleashStages(
        args.unleash_url, admin_token, project=args.project, environment=args.environment
    )
    return Controller(plan, reader, stages, dry_run=dry_run), reader


def rollout_command(
    args: argparse.Namespace, plan: Plan, admin_token: str, err: TextIO, out: TextIO | None = None
) -> int:
    """Run one `rollout` action over `plan`; 1 after a rollback, a timeout or an Unleash
    failure, 0 otherwise."""
    out = out if out is not None else sys.stdout
    if args.interval is not None:
        plan = replace(plan, interval=args.interval)
    steps: _Steps
    if plan.tracks:
        reader = PrometheusReader(args.prometheus or DEFAULT_PROMETHEUS)
        layers = UnleashLayers(
            args.unleash_url, admin_token, plan, project=args.project, environment=args.environment
        )
        steps = TrackController(plan, reader, layers, dry_run=args.dry_run)
    else:
        controller, reader = stage_controller(plan, args, admin_token, dry_run=args.dry_run)
        steps = _StageSteps(controller)
    metrics = _metrics(args, plan)
    colour = out.isatty() and not args.json
    try:
        if args.action == "run":
            return _run(steps, args, metrics, out, colour=colour)
        if args.action == "status":
            decisions = steps.status()
        elif args.action == "step":
            decisions = steps.step()
        else:
            decisions = (
                steps.rollback(getattr(args, "track", None), kill_switch=args.kill_switch),
            )
        emit(decisions, metrics, out, as_json=args.json, colour=colour)
        if args.action == "step" and any(d.action is Action.ROLLBACK for d in decisions):
            return FAILED
    except (FlagAdminError, KeyError) as error:
        err.write(f"cachegate rollout {args.action}: {error}\n")
        return FAILED
    finally:
        reader.close()
    return OK


def emit(
    decisions: Sequence[Decision],
    metrics: AutopilotMetrics | None,
    out: TextIO,
    *,
    as_json: bool,
    colour: bool,
) -> None:
    """Count `decisions` in `metrics` (if any) and write them: JSON lines or tables."""
    for decision in decisions:
        if metrics is not None:
            metrics.record(decision)
    if as_json:
        out.write(report.render_json(decisions))
    else:
        out.write("".join(report.render_decision(d, colour=colour) for d in decisions))
    out.flush()


def _metrics(args: argparse.Namespace, plan: Plan) -> AutopilotMetrics | None:
    if not getattr(args, "metrics_port", None):
        return None
    from prometheus_client import start_http_server

    metrics = default_autopilot_metrics(plan.names, {t.name: t.names for t in plan.tracks})
    start_http_server(args.metrics_port, addr=args.metrics_host)
    return metrics


def _run(
    steps: _Steps,
    args: argparse.Namespace,
    metrics: AutopilotMetrics | None,
    out: TextIO,
    *,
    colour: bool,
) -> int:
    """Step every interval until the last stage or every track's last state (0), a rollback
    (1) or `--timeout` (1)."""
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    while True:
        decisions = steps.step()
        emit(decisions, metrics, out, as_json=args.json, colour=colour)
        if all(d.action is Action.COMPLETE for d in decisions):
            return OK
        if any(d.action is Action.ROLLBACK for d in decisions):
            return FAILED
        if deadline is not None and time.monotonic() >= deadline:
            return FAILED
        time.sleep(steps.plan.interval)
