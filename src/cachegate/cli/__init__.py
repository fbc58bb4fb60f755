"""The `cachegate` command: run the demo, replay a rollout against it, move Unleash flags.

Exit codes: 0 done; 1 the work failed (a server unreachable or refusing, requests with errors
during a replay); 2 the command line or the environment is wrong (unknown stage, missing token).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

from cachegate.cli.common import ADMIN_TOKEN_ENV, FAILED, OK, USAGE, UsageError
from cachegate.cli.demo import demo_parsers
from cachegate.cli.flags import flags_parser
from cachegate.cli.rollout import rollout_parser

__all__ = ["ADMIN_TOKEN_ENV", "FAILED", "OK", "USAGE", "UsageError", "main", "parser"]


def parser() -> argparse.ArgumentParser:
    """The command line."""
    top = argparse.ArgumentParser(
        prog="cachegate",
        description="CacheGate: the demo service, the rollout replay, and Unleash flags.",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo_parsers(commands)
    flags_parser(commands)
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
