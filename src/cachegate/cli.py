"""The `cachegate` command: run the demo, replay a rollout against it, move Unleash flags.

Exit codes: 0 done; 1 the work failed (a server unreachable or refusing, requests with errors
during a replay); 2 the command line or the environment is wrong (unknown stage, missing token).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from cachegate.demo import DEFAULT_EMBED_LATENCY, DEFAULT_LATENCY, DEFAULT_STAGE
from cachegate.demo.workload import Catalog, Mix

if TYPE_CHECKING:
    import httpx

    from cachegate.autopilot.controller import Controller, Decision
    from cachegate.autopilot.plan import Plan
    from cachegate.autopilot.telemetry import AutopilotMetrics
    from cachegate.demo.replay import Progress, ReplayConfig, StageResult, Switcher

ADMIN_TOKEN_ENV = "UNLEASH_ADMIN_TOKEN"
OK, FAILED, USAGE = 0, 1, 2


class UsageError(Exception):
    """The command line or the environment is wrong; the message says how to fix it."""


def _stage(name: str) -> str:
    """A known stage name, or `UsageError` listing the stages."""
    from cachegate.flags import UnknownStageError, stage_path

    try:
        stage_path(name)
    except UnknownStageError as error:
        raise UsageError(str(error)) from None
    return name


def _admin_token() -> str:
    token = os.environ.get(ADMIN_TOKEN_ENV, "")
    if not token:
        raise UsageError(
            f"an Unleash admin API token is needed: set {ADMIN_TOKEN_ENV} in the environment"
        )
    return token


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, not {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, not {text!r}")
    return value


def _ratio(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {text!r}")
    return value


# --- serve ---------------------------------------------------------------------------------------


def serve(args: argparse.Namespace, err: TextIO) -> int:
    """Run the demo service under uvicorn."""
    import uvicorn

    from cachegate.demo.service import DemoConfig, build_demo

    stage = None if args.stage is None else _stage(args.stage)
    catalog = Catalog(workspaces=args.workspaces, clients=args.clients)
    config = DemoConfig(
        stage=stage,
        latency=args.latency,
        embed_latency=args.embed_latency,
        catalog=catalog,
        stale_writes=args.stale_writes,
    )
    try:
        demo = build_demo(config)
    except ValueError as error:
        raise UsageError(str(error)) from None
    for part, description in demo.parts.items():
        err.write(f"cachegate demo: {part}: {description}\n")
    err.write(f"cachegate demo: http://{args.host}:{args.port}  (POST /ai/query, GET /metrics)\n")
    uvicorn.run(
        demo.app, host=args.host, port=args.port, log_level="info", access_log=args.access_log
    )
    return OK


# --- replay --------------------------------------------------------------------------------------


def replay(args: argparse.Namespace, err: TextIO) -> int:
    """Drive the rollout workload through the target and print the measured tables."""
    from cachegate.demo import replay as rp
    from cachegate.flags.admin import FlagAdminError

    names = tuple(name.strip() for name in args.stages.split(",") if name.strip())
    for name in names:
        _stage(name)
    try:
        config = rp.ReplayConfig(
            url=rp.check_loopback(args.url),
            stages=names,
            requests=args.requests,
            duration=args.duration,
            concurrency=args.concurrency,
            seed=args.seed,
            catalog=Catalog(workspaces=args.workspaces, clients=args.clients),
            mix=Mix(write_ratio=args.write_ratio, near_duplicate_ratio=args.near_duplicates),
            namespace=args.namespace,
            query_cost=args.query_cost,
        )
    except ValueError as error:
        raise UsageError(str(error)) from None
    progress = rp.Progress(None if args.quiet else err)
    try:
        if args.autopilot:
            results = asyncio.run(_replay_autopilot(args, config, progress))
        else:
            switcher = _switcher(args)
            results = asyncio.run(rp.replay(config, switcher=switcher, progress=progress))
    except (rp.ReplayError, FlagAdminError) as error:
        err.write(f"cachegate replay: {error}\n")
        return FAILED
    printed = False
    if args.json is not None:
        rp.write_output(rp.render_json(results, config), args.json)
        printed = printed or args.json == "-"
    if args.markdown is not None:
        rp.write_output(rp.render_markdown(results), args.markdown)
        printed = printed or args.markdown == "-"
    if not printed:
        sys.stdout.write(rp.render_text(results))
    errors = sum(result.errors for result in results)
    if errors:
        err.write(f"cachegate replay: {errors} requests failed\n")
        return FAILED
    return OK


async def _replay_autopilot(
    args: argparse.Namespace, config: ReplayConfig, progress: Progress
) -> list[StageResult]:
    """`replay --autopilot`: rounds of load at the autopilot's stage, a step after each, the
    decisions printed as they are made."""
    from cachegate.autopilot.plan import PlanError, load_plan
    from cachegate.demo import replay as rp

    if not args.prometheus or not args.unleash_url:
        raise UsageError("--autopilot needs --prometheus URL and --unleash-url URL")
    try:
        plan = load_plan(Path(args.plan) if args.plan else None)
    except PlanError as error:
        raise UsageError(str(error)) from None
    controller, close = _controller(
        plan,
        prometheus=args.prometheus,
        unleash_url=args.unleash_url,
        project=args.unleash_project,
        environment=args.unleash_environment,
    )

    def current() -> str | None:
        return controller.stages.read().stage

    def step() -> bool:
        decision = controller.step()
        _print_decision(decision, as_json=False, colour=False)
        return decision.action.value in ("complete", "rollback")

    try:
        return await rp.replay_autopilot(
            config, current=current, step=step, rounds=args.rounds, progress=progress
        )
    finally:
        close()


def _switcher(args: argparse.Namespace) -> Callable[[httpx.AsyncClient], Switcher]:
    """How the replay moves stages: the demo's endpoint, or Unleash with `--unleash-url`."""
    from cachegate.demo import replay as rp

    if not args.unleash_url:
        return rp.DemoSwitcher
    token = _admin_token()
    from cachegate.flags.admin import apply_stage

    def apply(stage: str) -> None:
        apply_stage(
            args.unleash_url,
            token,
            stage,
            project=args.unleash_project,
            environment=args.unleash_environment,
        )

    def unleash(client: httpx.AsyncClient) -> Switcher:
        return rp.UnleashSwitcher(apply, client, timeout=args.stage_timeout)

    return unleash


# --- flags ---------------------------------------------------------------------------------------


def flags_apply(args: argparse.Namespace, err: TextIO) -> int:
    """Move the flags on an Unleash server to a stage."""
    from cachegate.flags.admin import FlagAdminError, apply_stage

    stage = _stage(args.stage)
    token = _admin_token()
    try:
        apply_stage(
            args.unleash_url, token, stage, project=args.project, environment=args.environment
        )
    except FlagAdminError as error:
        err.write(f"cachegate flags apply: {error}\n")
        return FAILED
    sys.stdout.write(
        f"flags of project {args.project}, environment {args.environment}: stage {stage}\n"
    )
    return OK


def flags_show(args: argparse.Namespace, err: TextIO) -> int:
    """Print the CacheGate flags an Unleash server holds."""
    from cachegate.flags.admin import FlagAdminError
    from cachegate.flags.report import show_flags

    token = _admin_token()
    try:
        text = show_flags(args.unleash_url, token, project=args.project)
    except FlagAdminError as error:
        err.write(f"cachegate flags show: {error}\n")
        return FAILED
    sys.stdout.write(text + "\n")
    return OK


# --- rollout -------------------------------------------------------------------------------------


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
    controller, close = _controller(
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
        _print_decision(decision, as_json=args.json, colour=colour)
        if args.action == "step" and decision.action.value == "rollback":
            code = FAILED
    except FlagAdminError as error:
        err.write(f"cachegate rollout {args.action}: {error}\n")
        return FAILED
    finally:
        close()
    return code


def _controller(
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
    stages = UnleashStages(unleash_url, _admin_token(), project=project, environment=environment)
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


def _print_decision(decision: Decision, *, as_json: bool, colour: bool) -> None:
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
        _print_decision(decision, as_json=args.json, colour=colour)
        if decision.action.value == "complete":
            return OK
        if decision.action.value == "rollback":
            return FAILED
        if deadline is not None and time.monotonic() >= deadline:
            return FAILED
        time.sleep(controller.plan.interval)


def _rollout_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
        sub.add_argument("--interval", type=_non_negative, help="seconds between steps (run)")
        sub.add_argument("--timeout", type=_non_negative, help="give up after this long (run)")
        sub.add_argument(
            "--metrics-port", type=int, help="serve the autopilot's metrics on this port (run)"
        )
        sub.add_argument("--metrics-host", default="127.0.0.1")
        if action == "rollback":
            sub.add_argument(
                "--kill-switch", action="store_true", help="pull the kill switch instead"
            )
            sub.set_defaults(prometheus=None)
        else:
            sub.set_defaults(kill_switch=False)


# --- the parser ----------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    """The command line."""
    from cachegate.flags import STAGES

    catalog = Catalog()
    top = argparse.ArgumentParser(
        prog="cachegate",
        description="CacheGate: the demo service, the rollout replay, and Unleash flags.",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    stage_list = ", ".join(STAGES)

    run = commands.add_parser("serve", help="run the demo service (what `make run` starts)")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8000)
    run.add_argument(
        "--stage",
        default=os.environ.get("CACHEGATE_STAGE") or None,
        help=(
            f"flag stage from flags/ ({stage_list}); default $CACHEGATE_STAGE, else "
            f"{DEFAULT_STAGE} without Unleash; with UNLEASH_URL the bootstrap used only when "
            "no persisted flag state exists, default off"
        ),
    )
    run.add_argument(
        "--latency",
        type=_non_negative,
        default=DEFAULT_LATENCY,
        help=f"seconds the simulated model takes per answer (default {DEFAULT_LATENCY})",
    )
    run.add_argument(
        "--embed-latency",
        type=_non_negative,
        default=DEFAULT_EMBED_LATENCY,
        help=f"seconds a local embedding call takes (default {DEFAULT_EMBED_LATENCY})",
    )
    run.add_argument("--workspaces", type=_positive_int, default=catalog.workspaces)
    run.add_argument("--clients", type=_positive_int, default=catalog.clients)
    run.add_argument("--access-log", action="store_true", help="log every request (paths only)")
    run.add_argument(
        "--stale-writes",
        type=_ratio,
        default=0.0,
        help="inject staleness: skip the invalidation of this share of writes (default 0)",
    )
    run.set_defaults(handler=serve)

    rep = commands.add_parser(
        "replay", help="drive a rollout workload through a service and print what it measured"
    )
    rep.add_argument("--url", default="http://127.0.0.1:8000", help="target (loopback only)")
    rep.add_argument(
        "--stages", default=",".join(STAGES), help=f"comma-separated (default {stage_list})"
    )
    rep.add_argument("--requests", type=_positive_int, default=400, help="per stage at most")
    rep.add_argument("--duration", type=float, default=120.0, help="seconds per stage at most")
    rep.add_argument("--concurrency", type=_positive_int, default=16)
    rep.add_argument("--seed", type=int, default=1)
    rep.add_argument("--workspaces", type=_positive_int, default=catalog.workspaces)
    rep.add_argument("--clients", type=_positive_int, default=catalog.clients)
    rep.add_argument("--write-ratio", type=_ratio, default=0.05, help="share of session writes")
    rep.add_argument(
        "--near-duplicates", type=_ratio, default=0.15, help="share of case/space variants"
    )
    rep.add_argument("--namespace", default="cachegate", help="the target's metrics prefix")
    rep.add_argument(
        "--query-cost",
        type=_non_negative,
        default=0.017,
        help="dollars of one uncached question, the base of 'cost saved' (default 0.017)",
    )
    rep.add_argument(
        "--json", nargs="?", const="-", metavar="PATH", help="JSON (- or no PATH: stdout)"
    )
    rep.add_argument(
        "--markdown", nargs="?", const="-", metavar="PATH", help="markdown (- or no PATH: stdout)"
    )
    rep.add_argument(
        "--unleash-url", help=f"move stages on this Unleash server (token: ${ADMIN_TOKEN_ENV})"
    )
    rep.add_argument("--unleash-project", default="default")
    rep.add_argument("--unleash-environment", default="development")
    rep.add_argument(
        "--stage-timeout",
        "--settle",
        dest="stage_timeout",
        type=_non_negative,
        default=60.0,
        help="with --unleash-url: seconds to wait at most for the target to report the stage "
        "from live flags after moving them; the replay fails after that (default 60)",
    )
    rep.add_argument("--quiet", action="store_true", help="no progress line")
    rep.add_argument(
        "--autopilot",
        action="store_true",
        help="let the rollout autopilot move the stages (needs --prometheus, --unleash-url): "
        "rounds of load at its stage, one step after each",
    )
    rep.add_argument("--prometheus", help="Prometheus scraping the target (--autopilot)")
    rep.add_argument("--plan", help="rollout plan file (--autopilot; default flags/)")
    rep.add_argument(
        "--rounds", type=_positive_int, default=30, help="at most this many (--autopilot)"
    )
    rep.set_defaults(handler=replay)

    flags = commands.add_parser("flags", help="move or show the flags on an Unleash server")
    actions = flags.add_subparsers(dest="action", required=True, metavar="ACTION")
    apply = actions.add_parser(
        "apply", help=f"move the flags to a stage (token: ${ADMIN_TOKEN_ENV})"
    )
    apply.add_argument("--stage", required=True, help=stage_list)
    apply.add_argument("--unleash-url", required=True)
    apply.add_argument("--project", default="default")
    apply.add_argument("--environment", default="development")
    apply.set_defaults(handler=flags_apply)
    show = actions.add_parser("show", help=f"print the flags (token: ${ADMIN_TOKEN_ENV})")
    show.add_argument("--unleash-url", required=True)
    show.add_argument("--project", default="default")
    show.set_defaults(handler=flags_show)
    _rollout_parser(commands)
    return top


def main(argv: Sequence[str] | None = None, *, err: TextIO | None = None) -> int:
    """Entry point of the `cachegate` command."""
    stream = err if err is not None else sys.stderr
    try:
        args = parser().parse_args(argv)
        result: int = args.handler(args, stream)
    except UsageError as error:
        command = " ".join(filter(None, (args.command, getattr(args, "action", None))))
        stream.write(f"cachegate {command}: {error}\n")
        return USAGE
    except ImportError as error:
        stream.write(
            f"cachegate: a dependency is missing ({error.name}): pip install 'cachegate[demo]'\n"
        )
        return USAGE
    return result


if __name__ == "__main__":
    sys.exit(main())
