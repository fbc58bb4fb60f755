"""`cachegate flags apply|show`: move a live Unleash server to a stage, or show what it holds."""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from cachegate.cli.common import ADMIN_TOKEN_ENV, FAILED, OK, admin_token, known_stage


def flags_apply(args: argparse.Namespace, err: TextIO) -> int:
    """Move the flags on an Unleash server to a stage."""
    from cachegate.flags.admin import FlagAdminError, apply_stage

    stage = known_stage(args.stage)
    token = admin_token()
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

    token = admin_token()
    try:
        text = show_flags(args.unleash_url, token, project=args.project)
    except FlagAdminError as error:
        err.write(f"cachegate flags show: {error}\n")
        return FAILED
    sys.stdout.write(text + "\n")
    return OK


def flags_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `flags apply` and `flags show` commands and their options."""
    from cachegate.flags import STAGES

    stage_list = ", ".join(STAGES)
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
