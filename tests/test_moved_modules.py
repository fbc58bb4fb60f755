"""Modules that moved into `cachegate.flags` and `cachegate.demo` fail loudly at their old path,
naming the new one, and the public names users import still come from `cachegate.flags`."""

from __future__ import annotations

import importlib
import sys

import pytest

MOVED = {
    "cachegate.flagadmin": "cachegate.flags.admin",
    "cachegate.flagstate": "cachegate.flags.state",
    "cachegate.replay": "cachegate.demo.replay",
    "cachegate.workload": "cachegate.demo.workload",
}


@pytest.mark.parametrize(("old", "new"), MOVED.items())
def test_an_old_module_path_names_the_new_one(old: str, new: str) -> None:
    sys.modules.pop(old, None)
    with pytest.raises(ImportError, match=new.replace(".", r"\.")):
        importlib.import_module(old)
    importlib.import_module(new)


def test_the_flag_names_users_import_stay_in_cachegate_flags() -> None:
    flags = importlib.import_module("cachegate.flags")
    for name in (
        "rollout_from_env",
        "FlagRollout",
        "OfflineFlags",
        "UnleashFlags",
        "UnleashSettings",
        "stage_path",
        "FLAG_KILL_SWITCH",
        "apply_stage",
        "show_flags",
        "read_stage",
        "set_kill_switch",
        "FlagStateFile",
        "Source",
    ):
        assert name in flags.__all__ and hasattr(flags, name), name


@pytest.mark.parametrize("module", ["cachegate", "cachegate.keys"])
def test_the_renamed_scope_names_its_new_name(module: str) -> None:
    imported = importlib.import_module(module)
    with pytest.raises(ImportError, match="CacheScope"):
        imported.Scope  # noqa: B018
    with pytest.raises(AttributeError):
        imported.NoSuchName  # noqa: B018
