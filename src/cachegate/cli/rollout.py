"""`cachegate rollout status|plan|step|run|rollback`: the autopilot (see docs/flags.md)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from cachegate.cli.common import ADMIN_TOKEN_ENV, FAILED, OK, UsageError, admin_token, non_negative

if TYPE_CHECKING:
    from cachegate.autopilot.controller import Controller, Decision
    from cachegate.autopilot.plan import Plan
    from cachegate.autopilot.telemetry import AutopilotMetrics


def rollout(args: argparse.Namespace, err: TextIO) -> int:
    """`cachegate rollout status|plan|step|run|rollback`: the autopilot (see docs/flags.md)."""
    from cachegate.autopilot import report
    from cachegate.autopilot.plan import PlanError, load_plan
    from cachegate.flags.admin import FlagAdminError

    try:
        plan = load_plan(Path(args.plan) if args.plan else None)
    except PlanError as error:
        raise UsageError(str(error)) from None
    if args.action == "plan":
        sys.stdout.write(report.render_plan(plan))
        return OK
    if args.action != "rollback" and not args.prometheus:
        raise UsageError("--prometheus URL is needed (the Prometheus that scrapes CacheGate)")
    if plan.tracks:
        from cachegate.autopilot.command import rollout_tracks

        return rollout_tracks(args, plan, admin_token(), err)
    controller, close = build_controller(
        plan,
        prometheus=args.prometheus,
        unleash_url=args.unleash_url,
        project=args.project,
        environment=args.environment,
        dry_run=args.dry_run,
        interval=args.interval,
    )
    metrics = _autopilot_metrics(args, plan)
    colour = sys.stdout.isatty() and not args.json
    code = OK
    try:
        if args.action == "run":
            return _run(controller, args, metrics, colour=colour)
        if args.action == "status":
            decision = controller.status()
        elif args.action == "step":
            decision = controller.step()
        else:
            decision = controller.rollback(kill_switch=args.kill_switch)
        if metrics is not None:
            metrics.record(decision)
        print_decision(decision, as_json=args.json, colour=colour)
        if args.action == "step" and decision.action.value == "rollback":
            code = FAILED
    except FlagAdminError as error:
        err.write(f"cachegate rollout {args.action}: {error}\n")
        return FAILED
    finally:
        close()
    return code


def build_controller(
    plan: Plan,
    *,
    prometheus: str | None,
    unleash_url: str,
    project: str,
    environment: str,
    dry_run: bool = False,
    interval: float | None = None,
) -> tuple[Controller, Callable[[], None]]:
    """The controller over Prometheus and Unleash, and how to close its connections."""
    from cachegate.autopilot.controller import Controller
    from cachegate.autopilot.prometheus import PrometheusReader
    from cachegate.autopilot.unleash import UnleashStages

    reader = PrometheusReader(prometheus or "http://127.0.0.1:9090")
    stages = UnleashStages(unleash_url, admin_token(), project=project, environment=environment)
    if interval is not None:
        plan = replace(plan, interval=interval)
    return Controller(plan, reader, stages, dry_run=dry_run), reader.close


def _autopilot_metrics(args: argparse.Namespace, plan: Plan) -> AutopilotMetrics | None:
    if not args.metrics_port:
        return None
    from prometheus_client import start_http_server

    from cachegate.autopilot.telemetry import default_autopilot_metrics

    metrics = default_autopilot_metrics(plan.names)
    start_http_server(args.metrics_port, addr=args.metrics_host)
    return metrics


def print_decision(decision: Decision, *, as_json: bool, colour: bool) -> None:
    from cachegate.autopilot import report

    if as_json:
        sys.stdout.write(report.render_json([decision]))
    else:
        sys.stdout.write(report.render_decision(decision, colour=colour))
    sys.stdout.flush()


def _run(
    controller: Controller,
    args: argparse.Namespace,
    metrics: AutopilotMetrics | None,
    *,
    colour: bool,
) -> int:
    """Step every interval until the last stage (0), a rollback (1) or `--timeout` (1)."""
    import time

    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    while True:
        decision = controller.step()
        if metrics is not None:
            metrics.record(decision)
        print_decision(decision, as_json=args.json, colour=colour)
        if decision.action.value == "complete":
            return OK
        if decision.action.value == "rollback":
            return FAILED
        if deadline is not None and time.monotonic() >= deadline:
            return FAILED
        time.sleep(controller.plan.interval)


def rollout_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `rollout` subcommands and their options."""
    top = commands.add_parser(
        "rollout", help="the autopilot: advance, hold or roll back the stages by measured gates"
    )
    actions = top.add_subparsers(dest="action", required=True, metavar="ACTION")
    helps = {
        "status": "the current stage and every gate's figure, bound and verdict (changes nothing)",
        "plan": "print the rollout plan",
        "step": "evaluate once and act: advance, hold or roll back",
        "run": "step every interval until the last stage or a rollback",
        "rollback": "go to the stage before (the last good one), or pull the kill switch",
    }
    for action, text in helps.items():
        sub = actions.add_parser(action, help=text)
        sub.add_argument("--plan", help="the plan file (default flags/rollout-plan.toml)")
        sub.set_defaults(handler=rollout)
        if action == "plan":
            continue
        if action != "rollback":
            sub.add_argument("--prometheus", required=True, help="Prometheus server root URL")
        sub.add_argument(
            "--unleash-url", required=True, help=f"Unleash server (token: ${ADMIN_TOKEN_ENV})"
        )
        sub.add_argument("--project", default="default")
        sub.add_argument("--environment", default="development")
        sub.add_argument("--json", action="store_true", help="one JSON document per decision")
        sub.add_argument(
            "--dry-run", action="store_true", help="evaluate and report; never touch Unleash"
        )
        sub.add_argument("--interval", type=non_negative, help="seconds between steps (run)")
        sub.add_argument("--timeout", type=non_negative, help="give up after this long (run)")
        sub.add_argument(
            "--metrics-port", type=int, help="serve the autopilot's metrics on this port (run)"
        )
        sub.add_argument("--metrics-host", default="127.0.0.1")
        if action == "rollback":
            sub.add_argument(
                "--kill-switch", action="store_true", help="pull the kill switch instead"
            )
            sub.add_argument("--track", help="a track plan: roll back this track a state")
            sub.set_defaults(prometheus=None)
        else:
            sub.set_defaults(kill_switch=False)
