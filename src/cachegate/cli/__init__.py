"""The `cachegate` command: run the demo, replay a rollout against it, move Unleash flags.

Exit codes: 0 done; 1 the work failed (a server unreachable or refusing, requests with errors
during a replay); 2 the command line or the environment is wrong (unknown stage, missing token).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from cachegate.cli.common import (
    ADMIN_TOKEN_ENV,
    FAILED,
    OK,
    USAGE,
    UsageError,
    non_negative,
    positive_int,
    ratio,
)
from cachegate.cli.demo import replay, serve
from cachegate.cli.flags import flags_apply, flags_show
from cachegate.cli.rollout import rollout_parser
from cachegate.demo import DEFAULT_EMBED_LATENCY, DEFAULT_LATENCY, DEFAULT_STAGE
from cachegate.demo.workload import Catalog

__all__ = ["ADMIN_TOKEN_ENV", "FAILED", "OK", "USAGE", "UsageError", "main", "parser"]


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
    run.add_argument("--workspaces", type=positive_int, default=catalog.workspaces)
    run.add_argument("--clients", type=positive_int, default=catalog.clients)
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
    rep.add_argument("--workspaces", type=positive_int, default=catalog.workspaces)
    rep.add_argument("--clients", type=positive_int, default=catalog.clients)
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
    rep.add_argument("--unleash-project", default="default")
    rep.add_argument("--unleash-environment", default="development")
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
    rollout_parser(commands)
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
