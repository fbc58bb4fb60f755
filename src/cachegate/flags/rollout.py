"""`FlagRollout`, the `Rollout` the flags drive, and `rollout_from_env`.

Rules (see docs/flags.md): the kill switch wins; per layer `serve` beats `shadow` beats off; a
request without tenant is in no rollout; a state without the kill-switch flag (unreadable, empty,
not ours) is off for every layer, and any other unknown flag counts as disabled. Decisions are
memoised per (snapshot version, tenant), so a request normally costs a dict lookup instead of
six `is_enabled` calls.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from cachegate.flags.cache import FlagSnapshot
from cachegate.flags.sources import FlagSource, OfflineFlags, UnleashFlags, UnleashSettings
from cachegate.flags.stages import (
    DEFAULT_STAGE,
    FLAG_KILL_SWITCH,
    FLAG_L1_VERIFY,
    LAYER_FLAGS,
    STAGE_ENV,
    STICKINESS_FIELD,
    stage_path,
)
from cachegate.flags.state import FlagStateFile
from cachegate.metrics import Metrics
from cachegate.rollout import OFF, Decision, Mode

logger = logging.getLogger("cachegate.flags")

_DECISIONS = {
    (l1, l2, verify): Decision(l1=l1, l2=l2, verify=verify)
    for l1 in Mode
    for l2 in Mode
    for verify in (False, True)
}
"""Every possible decision, built once so that deciding allocates nothing (all off is `OFF`)."""
_DECISIONS[Mode.OFF, Mode.OFF, False] = OFF

_LAYERS = tuple((layer.serve, layer.shadow) for layer in LAYER_FLAGS.values())
"""Each layer's (serve, shadow) flags, L1 then L2: the order of a decision's modes."""


class _Memo:
    """Decisions of one snapshot version, by tenant."""

    __slots__ = ("decisions", "version")

    def __init__(self, version: int) -> None:
        self.version = version
        self.decisions: dict[str, Decision] = {}


VERIFY_MIN_INTERVAL = 900.0
"""Seconds after which a tenant's next L1-serve request is verified whatever the sample says."""


class FlagRollout:
    """The `Rollout` driven by Unleash flags, memoising decisions per (flag state, tenant).

    The `cachegate.l1.verify` sample is drawn per request and never memoised: with the shipped
    shape (one `flexibleRollout`, stickiness `random`) its percentage is read from the payload
    and compared with `random()`; any other shape is evaluated by the SDK on each L1-serve request.
    Sampling is per tenant at the bottom: while the verify flag is on (the shipped shape), a
    tenant not verified for `verify_min_interval` seconds (counted from its first request) has
    its next L1-serve request verified,
    so a tenant with little traffic is still checked (docs/runbooks.md: the detection goal behind
    the numbers). A request so marked that turns out a miss verifies nothing (it is fresh).
    """

    def __init__(
        self,
        source: FlagSource,
        *,
        rng: Callable[[], float] = random.random,
        memo_size: int = 10_000,
        verify_min_interval: float = VERIFY_MIN_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`memo_size` bounds the tenants remembered per flag state (0 disables memoisation) and
        the tenants whose last verification is remembered; `verify_min_interval` 0 disables the
        per-tenant minimum."""
        self._source = source
        self._rng = rng
        self._memo_size = memo_size
        self._memo = _Memo(-1)
        self._failed_version = -1
        self._verify_min_interval = verify_min_interval
        self._clock = clock
        self._verified: dict[str, float] = {}

    @property
    def source(self) -> FlagSource:
        """Where the flags come from."""
        return self._source

    async def start(self, *, wait: float = 0.0) -> None:
        """Start the source (call from the app's lifespan startup)."""
        await self._source.start(wait=wait)

    async def aclose(self) -> None:
        """Stop the source (call from the app's lifespan shutdown)."""
        await self._source.aclose()

    def decide(self, tenant: str | None) -> Decision:
        """This request's decision; `OFF` without tenant or on any failure. Never raises."""
        try:
            decision = OFF if tenant is None else self._decide(tenant)
        except Exception:
            decision = OFF
            version = self._memo.version
            if version != self._failed_version:
                self._failed_version = version
                logger.warning("flag evaluation failed: every layer off", exc_info=True)
        return decision

    def _decide(self, tenant: str) -> Decision:
        snapshot = self._source.snapshot
        memo = self._memo
        if memo.version != snapshot.version:
            memo = self._memo = _Memo(snapshot.version)
        decision = memo.decisions.get(tenant)
        if decision is None:
            decision = self._evaluate(snapshot, tenant)
            if snapshot.settled and self._memo_size > 0 and self._source.snapshot is snapshot:
                self._remember(memo.decisions, tenant, decision)
        if decision.l1 is Mode.SERVE and self._verify(snapshot, tenant):
            return _DECISIONS[decision.l1, decision.l2, True]
        return decision

    def _remember(self, decisions: dict[str, Decision], tenant: str, decision: Decision) -> None:
        if len(decisions) >= self._memo_size:
            try:
                del decisions[next(iter(decisions))]
            except (KeyError, RuntimeError, StopIteration):
                decisions.clear()
        decisions[tenant] = decision

    def _evaluate(self, snapshot: FlagSnapshot, tenant: str) -> Decision:
        """The flags' decision for `tenant`, without verify and without memo."""
        known = snapshot.known
        if FLAG_KILL_SWITCH not in known:
            return OFF
        context = {STICKINESS_FIELD: tenant}
        is_enabled = self._source.is_enabled
        if is_enabled(FLAG_KILL_SWITCH, context):
            return OFF
        modes = []
        for serve, shadow in _LAYERS:
            if serve in known and is_enabled(serve, context):
                modes.append(Mode.SERVE)
            elif shadow in known and is_enabled(shadow, context):
                modes.append(Mode.SHADOW)
            else:
                modes.append(Mode.OFF)
        return _DECISIONS[modes[0], modes[1], False]

    def _verify(self, snapshot: FlagSnapshot, tenant: str) -> bool:
        rate = snapshot.verify_rate
        if rate is None:  # constraints may exclude tenants on purpose: no minimum
            return FLAG_L1_VERIFY in snapshot.known and self._source.is_enabled(
                FLAG_L1_VERIFY, {STICKINESS_FIELD: tenant}
            )
        if rate <= 0.0:
            return False
        sampled = self._rng() < rate
        if self._verify_min_interval <= 0:
            return sampled
        now = self._clock()
        last = self._verified.get(tenant)
        if last is None:  # the interval starts at a tenant's first request: no burst at start
            self._note_verified(tenant, now)
            return sampled
        if not sampled and now - last < self._verify_min_interval:
            return False
        self._note_verified(tenant, now)
        return True

    def _note_verified(self, tenant: str, now: float) -> None:
        verified = self._verified
        verified.pop(tenant, None)
        if len(verified) >= max(self._memo_size, 1):
            try:
                del verified[next(iter(verified))]
            except (KeyError, RuntimeError, StopIteration):
                verified.clear()
        verified[tenant] = now


def rollout_from_env(
    stage_file: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    metrics: Metrics | None = None,
) -> FlagRollout:
    """A `FlagRollout` configured from the environment.

    With `UNLEASH_URL` set: connected (`UnleashSettings.from_env`), starting from the state
    persisted in `FlagStateFile.default` (`CACHEGATE_FLAG_STATE_FILE`), else from `stage_file`;
    without: offline on `stage_file`. `stage_file` defaults to the stage named by
    `CACHEGATE_STAGE`, else `off`. Call `await rollout.start()` / `await rollout.aclose()` from
    the app's lifespan (no-ops offline).
    """
    env = os.environ if environ is None else environ
    if stage_file is None:
        stage_file = stage_path(env.get(STAGE_ENV) or DEFAULT_STAGE, env)
    source: FlagSource
    if env.get("UNLEASH_URL"):
        settings = UnleashSettings.from_env(env)
        source = UnleashFlags.connect(
            settings,
            bootstrap=stage_file,
            state_file=FlagStateFile.default(
                settings.url, settings.app_name, settings.environment, env
            ),
            metrics=metrics,
        )
    else:
        source = OfflineFlags.from_file(stage_file, metrics=metrics)
    return FlagRollout(source)
