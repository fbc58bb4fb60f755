"""`cachegate rollout status|plan|step|run|rollback`: the autopilot (see docs/flags.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from cachegate.cli.common import ADMIN_TOKEN_ENV, OK, UsageError, admin_token, non_negative

if TYPE_CHECKING:
    from cachegate.autopilot.plan import Plan


def rollout(args: argparse.Namespace, err: TextIO) -> int:
    """`cachegate rollout status|plan|step|run|rollback`: the autopilot (see docs/flags.md)."""
    from cachegate.autopilot import report

    plan = read_plan(args.plan)
    if args.action == "plan":
        sys.stdout.write(report.render_plan(plan))
        return OK
    if args.action != "rollback" and not args.prometheus:
        raise UsageError("--prometheus URL is needed (the Prometheus that scrapes CacheGate)")
    from cachegate.autopilot.command import rollout_command

    return rollout_command(args, plan, admin_token(), err)


def read_plan(path: str | None) -> Plan:
    """The rollout plan at `path` (default: the shipped one), or `UsageError` saying what is
    wrong with it."""
    from cachegate.autopilot.plan import PlanError, load_plan

    try:
        return load_plan(Path(path) if path else None)
    except PlanError as error:
        raise UsageError(str(error)) from None


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
