"""Rollout by Unleash flags: the stage files, the flag state, the sources over the Unleash SDK,
`FlagRollout` (the `Rollout` they drive) and the admin API that moves a server between stages.

One concept a module: `stages` (flag names, stage files, differences), `state` (where the state
came from and how old it is), `cache` (the SDK's cache and its snapshots), `sources` (offline and
Unleash), `rollout` (decisions), `admin` (changing a server), `report` (reading one). The names
below are the public API; see docs/flags.md.
"""

from cachegate.flags.admin import FlagAdminError, apply_stage, set_kill_switch
from cachegate.flags.cache import FeatureCache, FlagSnapshot
from cachegate.flags.report import ServerStage, read_stage, show_flags
from cachegate.flags.rollout import VERIFY_MIN_INTERVAL, FlagRollout, rollout_from_env
from cachegate.flags.sources import FlagSource, OfflineFlags, UnleashFlags, UnleashSettings
from cachegate.flags.stages import (
    FLAG_KILL_SWITCH,
    FLAG_L1_SERVE,
    FLAG_L1_SHADOW,
    FLAG_L1_VERIFY,
    FLAG_L2_SERVE,
    FLAG_L2_SHADOW,
    FLAGS,
    LAYER_FLAGS,
    ROLLOUT_FLAGS,
    STAGES,
    STICKINESS_FIELD,
    LayerFlags,
    UnknownStageError,
    flag_differences,
    flags_dir,
    nearest_stage,
    stage_path,
    stages,
)
from cachegate.flags.state import (
    STATE_FILE_ENV,
    FlagStateFile,
    FlagStateTracker,
    PersistedState,
    Source,
)

__all__ = [
    "FLAGS",
    "FLAG_KILL_SWITCH",
    "FLAG_L1_SERVE",
    "FLAG_L1_SHADOW",
    "FLAG_L1_VERIFY",
    "FLAG_L2_SERVE",
    "FLAG_L2_SHADOW",
    "LAYER_FLAGS",
    "ROLLOUT_FLAGS",
    "STAGES",
    "STATE_FILE_ENV",
    "STICKINESS_FIELD",
    "VERIFY_MIN_INTERVAL",
    "FeatureCache",
    "FlagAdminError",
    "FlagRollout",
    "FlagSnapshot",
    "FlagSource",
    "FlagStateFile",
    "FlagStateTracker",
    "LayerFlags",
    "OfflineFlags",
    "PersistedState",
    "ServerStage",
    "Source",
    "UnknownStageError",
    "UnleashFlags",
    "UnleashSettings",
    "apply_stage",
    "flag_differences",
    "flags_dir",
    "nearest_stage",
    "read_stage",
    "rollout_from_env",
    "set_kill_switch",
    "show_flags",
    "stage_path",
    "stages",
]
