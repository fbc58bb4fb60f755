"""`cachegate serve` and `cachegate replay`: run the demo service, drive a rollout against it."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from cachegate.cli.common import FAILED, OK, UsageError, admin_token, known_stage
from cachegate.cli.rollout import build_controller, print_decision
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
    from cachegate.autopilot.plan import PlanError, load_plan
    from cachegate.demo import replay as rp

    if not args.prometheus or not args.unleash_url:
        raise UsageError("--autopilot needs --prometheus URL and --unleash-url URL")
    try:
        plan = load_plan(Path(args.plan) if args.plan else None)
    except PlanError as error:
        raise UsageError(str(error)) from None
    controller, close = build_controller(
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
        print_decision(decision, as_json=False, colour=False)
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
    token = admin_token()
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
