"""What every `cachegate` command shares: exit codes, the usage error, and argument checks."""

from __future__ import annotations

import argparse
import os

ADMIN_TOKEN_ENV = "UNLEASH_ADMIN_TOKEN"
OK, FAILED, USAGE = 0, 1, 2


class UsageError(Exception):
    """The command line or the environment is wrong; the message says how to fix it."""


def known_stage(name: str) -> str:
    """A known stage name, or `UsageError` listing the stages."""
    from cachegate.flags import UnknownStageError, stage_path

    try:
        stage_path(name)
    except UnknownStageError as error:
        raise UsageError(str(error)) from None
    return name


def admin_token() -> str:
    token = os.environ.get(ADMIN_TOKEN_ENV, "")
    if not token:
        raise UsageError(
            f"an Unleash admin API token is needed: set {ADMIN_TOKEN_ENV} in the environment"
        )
    return token


def non_negative(text: str) -> float:
    value = float(text)
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, not {text!r}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, not {text!r}")
    return value


def ratio(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {text!r}")
    return value
