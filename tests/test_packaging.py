"""The wheel carries its data: an installed CacheGate finds the stage files and the rollout
plan without a checkout. The wheel is built and unpacked once for the module."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cachegate.flags import STAGES

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The built wheel, unpacked as an installation would lay it out."""
    where = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(where), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = where.glob("cachegate-*.whl")
    unpacked = where / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    yield unpacked


def probe(installed: Path, code: str) -> str:
    """Run `code` in a fresh interpreter that imports CacheGate from the unpacked wheel only."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.path.insert(0, sys.argv[1]); " + code,
            str(installed),
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=installed.parent,
    )
    return result.stdout


def test_an_installed_wheel_finds_every_stage(installed: Path) -> None:
    names, found = probe(
        installed,
        "import cachegate.flags as f; "
        "assert f.__file__.startswith(sys.argv[1]), f.__file__; "
        "print(','.join(f.stages({})), f.stage_path('l1-10', {}).is_file())",
    ).split()
    assert set(names.split(",")) >= {"off", "dark-launch", "l2", "l1-10", "l1-50", "l1-100"}
    assert found == "True"


def test_an_installed_wheel_carries_the_plan(installed: Path) -> None:
    inside, names = probe(
        installed,
        "from cachegate.autopilot.plan import load_plan; plan = load_plan(environ={}); "
        "print(plan.source.startswith(sys.argv[1]), ','.join(plan.names))",
    ).split()
    assert inside == "True"
    assert tuple(names.split(",")) == STAGES
