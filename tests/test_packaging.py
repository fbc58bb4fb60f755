"""The wheel carries the stage files: an installed CacheGate finds them without a checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_an_installed_wheel_finds_every_stage(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("cachegate-*.whl")
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); import cachegate.flags as f; "
        "assert f.__file__.startswith(sys.argv[1]), f.__file__; "
        "print(','.join(f.stages({})), f.stage_path('l1-10', {}).is_file())"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(unpacked)],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    names, found = result.stdout.split()
    assert set(names.split(",")) >= {"off", "dark-launch", "l2", "l1-10", "l1-50", "l1-100"}
    assert found == "True"
