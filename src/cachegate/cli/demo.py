"""`cachegate serve` and `cachegate replay`: run the demo service, drive a rollout against it."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from cachegate.cli.common import (
    ADMIN_TOKEN_ENV,
    FAILED,
    OK,
    UsageError,
    admin_token,
    known_stage,
    non_negative,
    positive_int,
    ratio,
)
from cachegate.cli.rollout import read_plan
from cachegate.demo import DEFAULT_EMBED_LATENCY, DEFAULT_LATENCY, DEFAULT_STAGE
from cachegate.demo.workload import Catalog, Mix

if TYPE_CHECKING:
    import httpx

    from cachegate.demo.replay import Progress, ReplayConfig, StageResult, Switcher


def serve(args: argparse.Namespace, err: TextIO) -> int:
    """Run the demo service under uvicorn."""
    import uvicorn

    from cachegate.demo.service import DemoConfig, build_demo

    stage = None if args.stage is None else known_stage(args.stage)
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
        known_stage(name)
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
    from cachegate.autopilot.command import emit, stage_controller
    from cachegate.demo import replay as rp

    if not args.prometheus or not args.unleash_url:
        raise UsageError("--autopilot needs --prometheus URL and --unleash-url URL")
    controller, reader = stage_controller(read_plan(args.plan), args, admin_token())

    def current() -> str | None:
        return controller.stages.read().stage

    def step() -> bool:
        decision = controller.step()
        emit((decision,), None, sys.stdout, as_json=False, colour=False)
        return decision.action.value in ("complete", "rollback")

    try:
        return await rp.replay_autopilot(
            config, current=current, step=step, rounds=args.rounds, progress=progress
        )
    finally:
        reader.close()


def _switcher(args: argparse.Namespace) -> Callable[[httpx.AsyncClient], Switcher]:
    """How the replay moves stages: the demo's endpoint, or Unleash with `--unleash-url`."""
    from cachegate.demo import replay as rp

    if not args.unleash_url:
        return rp.DemoSwitcher
    token = admin_token()
    from cachegate.flags.admin import apply_stage

    def apply(stage: str) -> None:
        apply_stage(
            args.unleash_url,
            token,
            stage,
            project=args.project,
            environment=args.environment,
        )

    def unleash(client: httpx.AsyncClient) -> Switcher:
        return rp.UnleashSwitcher(apply, client, timeout=args.stage_timeout)

    return unleash


def demo_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `serve` and `replay` commands and their options."""
    from cachegate.flags import STAGES

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
        type=non_negative,
        default=DEFAULT_LATENCY,
        help=f"seconds the simulated model takes per answer (default {DEFAULT_LATENCY})",
    )
    run.add_argument(
        "--embed-latency",
        type=non_negative,
        default=DEFAULT_EMBED_LATENCY,
        help=f"seconds a local embedding call takes (default {DEFAULT_EMBED_LATENCY})",
    )
    _catalog_options(run)
    run.add_argument("--access-log", action="store_true", help="log every request (paths only)")
    run.add_argument(
        "--stale-writes",
        type=ratio,
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
    rep.add_argument("--requests", type=positive_int, default=400, help="per stage at most")
    rep.add_argument("--duration", type=float, default=120.0, help="seconds per stage at most")
    rep.add_argument("--concurrency", type=positive_int, default=16)
    rep.add_argument("--seed", type=int, default=1)
    _catalog_options(rep)
    rep.add_argument("--write-ratio", type=ratio, default=0.05, help="share of session writes")
    rep.add_argument(
        "--near-duplicates", type=ratio, default=0.15, help="share of case/space variants"
    )
    rep.add_argument("--namespace", default="cachegate", help="the target's metrics prefix")
    rep.add_argument(
        "--query-cost",
        type=non_negative,
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
    # dest as in `rollout`, so that both build the autopilot from the same arguments
    rep.add_argument(
        "--unleash-project", dest="project", metavar="UNLEASH_PROJECT", default="default"
    )
    rep.add_argument(
        "--unleash-environment",
        dest="environment",
        metavar="UNLEASH_ENVIRONMENT",
        default="development",
    )
    rep.add_argument(
        "--stage-timeout",
        "--settle",
        dest="stage_timeout",
        type=non_negative,
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
        "--rounds", type=positive_int, default=30, help="at most this many (--autopilot)"
    )
    rep.set_defaults(handler=replay)


def _catalog_options(command: argparse.ArgumentParser) -> None:
    """`--workspaces` and `--clients`: the size of the demo's catalog, for `serve` and `replay`."""
    catalog = Catalog()
    command.add_argument("--workspaces", type=positive_int, default=catalog.workspaces)
    command.add_argument("--clients", type=positive_int, default=catalog.clients)
