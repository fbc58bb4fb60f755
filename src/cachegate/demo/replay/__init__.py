"""`cachegate replay`: a realistic workload through the rollout stages, measured.

For each stage the flags are moved (`switching`: the demo's `/_demo/stage`, or `apply_stage` on
an Unleash server, then waiting until the target reports the stage from live flags), a bounded
workload runs (`load`, on `cachegate.demo.workload`), and the stage is measured twice (`figures`):
client-side (latency by the `X-CacheGate` path of each response, errors) and server-side
(`/metrics` deltas). `report` renders the tables; `autopilot` lets the autopilot own the flags.
The report never holds a tenant id or a question: only counts and durations.
"""

from cachegate.demo.replay.autopilot import replay_autopilot
from cachegate.demo.replay.config import (
    DEFAULT_STAGES,
    NO_HEADER,
    PATHS,
    TENANT_HEADER,
    ReplayConfig,
    ReplayError,
    check_loopback,
)
from cachegate.demo.replay.figures import (
    Agreement,
    Layer,
    Percentiles,
    Samples,
    StageResult,
    measure,
)
from cachegate.demo.replay.load import Progress, Replay, client_for, replay
from cachegate.demo.replay.report import (
    render_json,
    render_markdown,
    render_text,
    tables,
    write_output,
)
from cachegate.demo.replay.switching import DemoSwitcher, Switcher, UnleashSwitcher

__all__ = [
    "DEFAULT_STAGES",
    "NO_HEADER",
    "PATHS",
    "TENANT_HEADER",
    "Agreement",
    "DemoSwitcher",
    "Layer",
    "Percentiles",
    "Progress",
    "Replay",
    "ReplayConfig",
    "ReplayError",
    "Samples",
    "StageResult",
    "Switcher",
    "UnleashSwitcher",
    "check_loopback",
    "client_for",
    "measure",
    "render_json",
    "render_markdown",
    "render_text",
    "replay",
    "replay_autopilot",
    "tables",
    "write_output",
]
