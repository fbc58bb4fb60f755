"""Flag evaluation cost per request: `FlagRollout.decide(tenant)` memoised and not.

The flags are a shipped stage file (`flags/l1-50.json`: percentage rollouts sticky on the
workspace, the kill switch, a 15 % random verify sample) evaluated offline by the Unleash SDK's
own engine. 1 000 tenants are decided in turn; each sample is the mean of one pass over them.
The same decisions are then measured where they are paid: the in-process hit path
(`MemoryStore`) with a `StaticRollout` against a `FlagRollout` on the `l1-100` stage.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from benchmarks import apps
from benchmarks.harness import Samples, time_sync
from cachegate.rollout import Decision

if TYPE_CHECKING:
    from cachegate.flags import FlagSource

STAGE = "l1-50"
HIT_STAGE = "l1-100"
TENANTS = [f"workspace-{i:04d}" for i in range(1000)]


@dataclass
class FlagResult:
    decide: dict[str, Samples] = field(default_factory=dict)
    hit_path: dict[str, Samples] = field(default_factory=dict)
    stage: str = STAGE
    hit_stage: str = HIT_STAGE
    available: bool = True
    note: str = ""


@dataclass(frozen=True, slots=True)
class DecisionCost:
    """Mean wall time of one `decide()` call, memoised and not, in nanoseconds."""

    memoised_ns: float
    unmemoised_ns: float
    decisions: int


def measure_decision_cost(
    source: FlagSource,
    *,
    tenants: Sequence[str] | None = None,
    rounds: int = 5,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> DecisionCost:
    """Time `decide()` over `tenants` for `rounds` rounds, with and without memoisation.

    The memoised rollout is warmed first, so its figure is the steady state of a stable flag
    state; the other evaluates every flag with the SDK on each call.
    """
    from cachegate.flags import FlagRollout

    names = list(tenants) if tenants is not None else [f"tenant-{i}" for i in range(1000)]
    memoised = FlagRollout(source, memo_size=max(len(names), 1))
    unmemoised = FlagRollout(source, memo_size=0)
    for name in names:
        memoised.decide(name)

    def timed(rollout: FlagRollout) -> float:
        decide = rollout.decide
        start = clock()
        for _ in range(rounds):
            for name in names:
                decide(name)
        return (clock() - start) / (rounds * len(names))

    return DecisionCost(
        memoised_ns=timed(memoised),
        unmemoised_ns=timed(unmemoised),
        decisions=rounds * len(names),
    )


def _decide_costs(quick: bool) -> dict[str, Samples]:
    from cachegate import StaticRollout
    from cachegate.flags import FlagRollout, OfflineFlags, stage_path

    source = OfflineFlags.from_file(stage_path(STAGE))
    memoised = FlagRollout(source, memo_size=len(TENANTS))
    unmemoised = FlagRollout(source, memo_size=0)
    static = StaticRollout()

    def over(decide: Callable[[str], Decision]) -> Callable[[], None]:
        def one_pass() -> None:
            for tenant in TENANTS:
                decide(tenant)

        return one_pass

    variants = {
        "StaticRollout.decide (no flags)": over(static.decide),
        "FlagRollout.decide, memoised": over(memoised.decide),
        "FlagRollout.decide, not memoised": over(unmemoised.decide),
    }
    samples = time_sync(
        variants,
        warmup=3,
        iterations=20 if quick else 200,
        rounds=4,
    )
    for item in samples.values():  # per pass of 1000 -> per decision
        item.values = [value / len(TENANTS) for value in item.values]
    return samples


async def _hit_path(quick: bool) -> dict[str, Samples]:
    from benchmarks.l1 import time_apps
    from cachegate import StaticRollout
    from cachegate.flags import FlagRollout, OfflineFlags, stage_path
    from cachegate.rollout import Rollout

    source = OfflineFlags.from_file(stage_path(HIT_STAGE))

    def build() -> dict[str, apps.Built]:
        rollouts: dict[str, Rollout] = {
            "hit path, StaticRollout": StaticRollout(),
            "hit path, FlagRollout memoised": FlagRollout(source),
            "hit path, FlagRollout not memoised": FlagRollout(source, memo_size=0),
        }
        return {
            name: apps.hit_memory_rollout(rollout, f"cgbench-flags{i}")
            for i, (name, rollout) in enumerate(rollouts.items())
        }

    return await time_apps(build, quick=quick, expect="hit_memory")


def run(*, quick: bool) -> FlagResult:
    try:
        import cachegate.flags  # noqa: F401
    except ImportError as error:
        return FlagResult(available=False, note=f"cachegate.flags is not importable: {error}")
    result = FlagResult()
    result.decide = _decide_costs(quick)
    result.hit_path = asyncio.run(_hit_path(quick))
    return result
