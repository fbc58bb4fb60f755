"""Generate the rollout stage files in this directory, from one table, so that no stage is edited
by hand and every stage says the same thing about the flags it shares.

`python flags/generate.py` rewrites `<stage>.json` for every stage next to this file; `--check`
exits non-zero when the checked-in files differ from what this table generates (the suite runs
it). Each file is an Unleash client-features payload (`/api/client/features`): every flag has one
`flexibleRollout` strategy; serve and shadow flags are sticky on the tenant (`workspaceId`), the
verify flag is a per-request sample (`random`). Stdlib only: it runs before the package is
installed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Flag:
    """A CacheGate flag: its Unleash type, description, stickiness and rollout percentage."""

    name: str
    kind: str
    description: str
    stickiness: str
    rollout: str = "100"


FLAGS = (
    Flag(
        "cachegate.kill-switch",
        "kill-switch",
        "On: every CacheGate layer is off (fresh answers only). Wins over all other flags.",
        "default",
    ),
    Flag(
        "cachegate.l1.shadow",
        "release",
        "L1 result cache in shadow mode: look up, compare, fill; the fresh answer is served.",
        "workspaceId",
    ),
    Flag(
        "cachegate.l1.serve",
        "release",
        "L1 result cache serves hits to this share of tenants (stickiness workspaceId).",
        "workspaceId",
        rollout="0",
    ),
    Flag(
        "cachegate.l2.shadow",
        "release",
        "L2 embedding cache in shadow mode: look up, compare, fill; fresh vectors are used.",
        "workspaceId",
    ),
    Flag(
        "cachegate.l2.serve",
        "release",
        "L2 embedding cache serves hits to this share of tenants (stickiness workspaceId).",
        "workspaceId",
    ),
    Flag(
        "cachegate.l1.verify",
        "operational",
        "Share of L1 hits recomputed in the background and compared "
        "(stickiness random: a per-request sample rate).",
        "random",
        rollout="15",
    ),
)
"""Every flag CacheGate reads, in file order (`cachegate.flags.FLAGS`)."""

STAGES: Mapping[str, Mapping[str, Any]] = {
    "off": {},
    "dark-launch": {"cachegate.l1.shadow": True, "cachegate.l2.shadow": True},
    "l2": {"cachegate.l1.shadow": True, "cachegate.l2.shadow": True, "cachegate.l2.serve": True},
    **{
        f"l1-{share}": {
            "cachegate.l1.shadow": True,
            "cachegate.l1.serve": str(share),
            "cachegate.l2.shadow": True,
            "cachegate.l2.serve": True,
            "cachegate.l1.verify": True,
        }
        for share in (10, 50, 100)
    },
}
"""Per stage, in rollout order (`cachegate.flags.STAGES`): the flags that are on, and for
`cachegate.l1.serve` its rollout percentage (a string, as Unleash holds it). Unlisted: off."""


def feature(flag: Flag, state: bool | str | None) -> dict[str, Any]:
    """One flag of a stage file: on when `state` is given (a string is also its percentage)."""
    rollout = state if isinstance(state, str) else flag.rollout
    parameters = {"groupId": flag.name, "rollout": rollout, "stickiness": flag.stickiness}
    return {
        "name": flag.name,
        "type": flag.kind,
        "description": flag.description,
        "project": "default",
        "enabled": state is not None,
        "stale": False,
        "impressionData": False,
        "strategies": [
            {
                "name": "flexibleRollout",
                "constraints": [],
                "parameters": parameters,
                "variants": [],
            }
        ],
        "variants": [],
    }


def stage_files() -> dict[str, str]:
    """Every stage file's name and text."""
    return {
        f"{stage}.json": json.dumps(
            {"version": 2, "features": [feature(flag, on.get(flag.name)) for flag in FLAGS]},
            indent=2,
        )
        + "\n"
        for stage, on in STAGES.items()
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Write or check the stage files; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the files on disk differ from the table"
    )
    parser.add_argument("--output-dir", type=Path, default=HERE)
    args = parser.parse_args(argv)
    stale = []
    for name, text in stage_files().items():
        path = args.output_dir / name
        if args.check:
            current = path.read_text(encoding="utf-8") if path.is_file() else None
            if current != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"stage files differ from flags/generate.py: {', '.join(stale)}", file=sys.stderr)
        print("run: python flags/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
