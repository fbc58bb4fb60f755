"""Decisions from bootstrapped flags: stages, stickiness, rollout shares, kill switch, fail-safe,
memoisation and the verify sample. Everything here evaluates with the real Unleash SDK engine."""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from UnleashClient.constants import ETAG, FEATURES_URL
from UnleashClient.utils import normalized_hash

from cachegate.flags import (
    FLAG_KILL_SWITCH,
    FLAG_L1_SERVE,
    FLAG_L1_VERIFY,
    FLAGS,
    STAGES,
    FeatureCache,
    FlagRollout,
    FlagSnapshot,
    OfflineFlags,
    UnknownStageError,
    UnleashFlags,
    UnleashSettings,
    rollout_from_env,
    stage_path,
    stages,
)
from cachegate.rollout import OFF, Decision, Mode

TENANTS = [f"workspace-{i}" for i in range(2000)]
OFF_OFF = Decision()
SHADOW_SHADOW = Decision(l1=Mode.SHADOW, l2=Mode.SHADOW)
SHADOW_SERVE = Decision(l1=Mode.SHADOW, l2=Mode.SERVE)
SERVE_SERVE = Decision(l1=Mode.SERVE, l2=Mode.SERVE)


def stage_payload(name: str) -> dict[str, Any]:
    return json.loads(stage_path(name).read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def feature(payload: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in payload["features"] if f["name"] == name)  # type: ignore[no-any-return]


def with_l1_rollout(percentage: int) -> str:
    payload = stage_payload("l1-10")
    feature(payload, FLAG_L1_SERVE)["strategies"][0]["parameters"]["rollout"] = str(percentage)
    return json.dumps(payload)


@cache
def l1_source(percentage: int) -> OfflineFlags:
    return OfflineFlags(with_l1_rollout(percentage))


def base(decision: Decision) -> tuple[Mode, Mode]:
    return decision.l1, decision.l2


def serving(rollout: FlagRollout, tenants: list[str]) -> set[str]:
    return {t for t in tenants if rollout.decide(t).l1 is Mode.SERVE}


class CountingFlags:
    """A real `OfflineFlags` that counts the SDK evaluations asked of it."""

    def __init__(self, payload: str | None) -> None:
        self.inner = OfflineFlags(payload)
        self.calls = 0

    @property
    def snapshot(self) -> FlagSnapshot:
        return self.inner.snapshot

    def is_enabled(self, flag: str, context: dict[str, str]) -> bool:
        self.calls += 1
        return self.inner.is_enabled(flag, context)

    async def start(self, *, wait: float = 0.0) -> None:
        pass

    async def aclose(self) -> None:
        pass


# --- stage files -------------------------------------------------------------------------------


def test_every_stage_has_a_file_defining_all_six_flags() -> None:
    assert stages() == list(STAGES)
    for name in STAGES:
        names = [f["name"] for f in stage_payload(name)["features"]]
        assert sorted(names) == sorted(FLAGS), name


def test_unknown_stage_names_the_stages() -> None:
    with pytest.raises(UnknownStageError) as error:
        stage_path("l1-25")
    message = str(error.value)
    assert "'l1-25'" in message
    assert all(name in message for name in STAGES)
    with pytest.raises(UnknownStageError):
        stage_path("../pyproject")


def test_flags_dir_override(tmp_path: Path) -> None:
    (tmp_path / "canary.json").write_text(stage_path("dark-launch").read_text())
    environ = {"CACHEGATE_FLAGS_DIR": str(tmp_path)}
    assert stage_path("canary", environ) == tmp_path / "canary.json"
    with pytest.raises(UnknownStageError, match="stages: canary"):
        stage_path("off", environ)


@pytest.mark.parametrize(
    ("stage", "expected"),
    [
        ("off", {OFF_OFF}),
        ("dark-launch", {SHADOW_SHADOW}),
        ("l2", {SHADOW_SERVE}),
        ("l1-10", {SHADOW_SERVE, SERVE_SERVE}),
        ("l1-50", {SHADOW_SERVE, SERVE_SERVE}),
        ("l1-100", {SERVE_SERVE}),
    ],
)
def test_stage_modes(stage: str, expected: set[Decision]) -> None:
    rollout = FlagRollout(OfflineFlags.from_file(stage_path(stage)), rng=lambda: 1.0)
    assert {rollout.decide(t) for t in TENANTS} == expected


# --- stickiness and shares ---------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(tenant=st.text(min_size=1, max_size=64))
def test_a_tenant_always_gets_the_same_mode(tenant: str) -> None:
    source = l1_source(50)
    memoised = FlagRollout(source)
    fresh = FlagRollout(OfflineFlags(with_l1_rollout(50)), memo_size=0)
    first = base(memoised.decide(tenant))
    assert all(base(memoised.decide(tenant)) == first for _ in range(3))
    assert base(fresh.decide(tenant)) == first


@pytest.mark.parametrize("percentage", [10, 50, 100])
def test_share_of_tenants_in_serve_is_the_percentage(percentage: int) -> None:
    p = percentage / 100
    share = len(serving(FlagRollout(l1_source(percentage)), TENANTS)) / len(TENANTS)
    bound = 5 * math.sqrt(p * (1 - p) / len(TENANTS))  # five binomial standard deviations
    assert abs(share - p) <= bound, (share, p, bound)


def test_serve_follows_unleash_normalized_hash() -> None:
    """flexibleRollout serves a tenant iff murmur3("groupId:tenant") % 100 + 1 <= percentage, a
    bucket fixed per tenant: that is why raising the percentage only ever adds tenants."""
    for percentage in (10, 50):
        served = serving(FlagRollout(l1_source(percentage)), TENANTS)
        expected = {t for t in TENANTS if normalized_hash(t, FLAG_L1_SERVE) <= percentage}
        assert served == expected


def test_growth_from_10_to_50_to_100_keeps_the_first_tenants_in() -> None:
    at_10, at_50, at_100 = (serving(FlagRollout(l1_source(p)), TENANTS) for p in (10, 50, 100))
    assert at_10 < at_50 < at_100 == set(TENANTS)


@settings(max_examples=200, deadline=None)
@given(
    tenant=st.text(min_size=1, max_size=40),
    low=st.sampled_from([0, 1, 10, 25, 50, 99, 100]),
    high=st.sampled_from([0, 1, 10, 25, 50, 99, 100]),
)
def test_growth_is_monotonic_for_any_tenant(tenant: str, low: int, high: int) -> None:
    low, high = min(low, high), max(low, high)
    if FlagRollout(l1_source(low)).decide(tenant).l1 is Mode.SERVE:
        assert FlagRollout(l1_source(high)).decide(tenant).l1 is Mode.SERVE


def test_a_request_without_tenant_is_in_no_rollout() -> None:
    assert FlagRollout(l1_source(100)).decide(None) is OFF


# --- kill switch and fail-safe -----------------------------------------------------------------


def test_kill_switch_turns_every_layer_off() -> None:
    payload = stage_payload("l1-100")
    feature(payload, FLAG_KILL_SWITCH)["enabled"] = True
    rollout = FlagRollout(OfflineFlags(json.dumps(payload)))
    assert {rollout.decide(t) for t in TENANTS} == {OFF}


def test_kill_switch_for_one_tenant_by_constraint() -> None:
    payload = stage_payload("l1-100")
    kill = feature(payload, FLAG_KILL_SWITCH)
    kill["enabled"] = True
    kill["strategies"][0]["constraints"] = [
        {"contextName": "workspaceId", "operator": "IN", "values": ["workspace-7"]}
    ]
    rollout = FlagRollout(OfflineFlags(json.dumps(payload)), rng=lambda: 1.0)
    assert rollout.decide("workspace-7") is OFF
    assert rollout.decide("workspace-8") == SERVE_SERVE


@pytest.mark.parametrize(
    "content",
    [None, "", "not json", "[]", '{"version": 2}', '{"features": "no"}'],
)
def test_unreadable_flags_mean_off(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "stage.json"
    if content is not None:
        path.write_text(content)
    rollout = FlagRollout(OfflineFlags.from_file(path))
    assert {rollout.decide(t) for t in TENANTS[:100]} == {OFF}


def test_flags_without_the_kill_switch_mean_off() -> None:
    payload = stage_payload("l1-100")
    payload["features"] = [f for f in payload["features"] if f["name"] != FLAG_KILL_SWITCH]
    rollout = FlagRollout(OfflineFlags(json.dumps(payload)))
    assert {rollout.decide(t) for t in TENANTS[:100]} == {OFF}


def test_an_unknown_layer_flag_counts_as_disabled() -> None:
    payload = stage_payload("l1-100")
    payload["features"] = [f for f in payload["features"] if f["name"] != FLAG_L1_SERVE]
    rollout = FlagRollout(OfflineFlags(json.dumps(payload)))
    assert {rollout.decide(t) for t in TENANTS[:100]} == {SHADOW_SERVE}


def test_a_failing_source_means_off_and_never_raises() -> None:
    class Broken(CountingFlags):
        def is_enabled(self, flag: str, context: dict[str, str]) -> bool:
            raise RuntimeError("engine gone")

    rollout = FlagRollout(Broken(stage_path("l1-100").read_text()))
    assert rollout.decide("workspace-1") is OFF


# --- memoisation -------------------------------------------------------------------------------


def test_decisions_are_memoised_per_flag_state() -> None:
    source = CountingFlags(with_l1_rollout(100))
    rollout = FlagRollout(source)
    assert rollout.decide("workspace-1").l1 is Mode.SERVE
    evaluated = source.calls
    assert evaluated >= 2
    for _ in range(10):
        assert rollout.decide("workspace-1").l1 is Mode.SERVE
    assert source.calls == evaluated

    killed = stage_payload("l1-100")
    feature(killed, FLAG_KILL_SWITCH)["enabled"] = True
    source.inner.load(json.dumps(killed))
    assert rollout.decide("workspace-1") is OFF
    assert source.calls == evaluated + 1


def test_memo_is_bounded() -> None:
    source = CountingFlags(with_l1_rollout(100))
    rollout = FlagRollout(source, memo_size=10)
    for tenant in TENANTS[:50]:
        rollout.decide(tenant)
    calls = source.calls
    rollout.decide(TENANTS[49])
    assert source.calls == calls
    rollout.decide(TENANTS[0])
    assert source.calls > calls


def test_a_new_payload_is_not_memoised_until_it_settles() -> None:
    """The SDK writes a fetched payload to the cache before its engine takes it; the next poll
    (which reads the ETag first) proves the engine has it."""
    cache = FeatureCache()
    cache.bootstrap(stage_path("dark-launch").read_text())
    cache.settle()
    before = cache.snapshot
    assert before.settled
    cache.set(FEATURES_URL, stage_path("l1-100").read_text())
    changed = cache.snapshot
    assert not changed.settled and changed.version != before.version
    assert changed.verify_rate == 0.15
    cache.set(FEATURES_URL, stage_path("l1-100").read_text())
    assert cache.snapshot is changed
    cache.get(ETAG, "")
    settled = cache.snapshot
    assert settled.settled and settled.version != changed.version
    assert cache.polls == 1


def test_decisions_on_an_unsettled_state_are_evaluated_every_time() -> None:
    class Unsettled(CountingFlags):
        @property
        def snapshot(self) -> FlagSnapshot:
            snapshot = self.inner.snapshot
            return FlagSnapshot(snapshot.version, False, snapshot.known, snapshot.verify_rate)

    source = Unsettled(with_l1_rollout(100))
    rollout = FlagRollout(source)
    rollout.decide("workspace-1")
    calls = source.calls
    rollout.decide("workspace-1")
    assert source.calls == 2 * calls


def test_memoised_decisions_cost_far_less(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent))
    from benchmarks.flag_cost import measure_decision_cost  # the helper is benchmark tooling

    cost = measure_decision_cost(l1_source(10), tenants=TENANTS[:300], rounds=3)
    assert cost.memoised_ns * 10 < cost.unmemoised_ns, cost


# --- verify ------------------------------------------------------------------------------------


def test_verify_is_sampled_per_request_only_when_l1_serves() -> None:
    draws = iter([0.01, 0.2, 0.149, 0.15])
    rollout = FlagRollout(l1_source(100), rng=lambda: next(draws))
    assert [rollout.decide("workspace-1").verify for _ in range(4)] == [True, False, True, False]
    shadow_only = FlagRollout(OfflineFlags.from_file(stage_path("l2")), rng=lambda: 0.0)
    assert not shadow_only.decide("workspace-1").verify


def test_verify_share_is_the_flag_percentage() -> None:
    rollout = FlagRollout(l1_source(100))
    n = 20_000
    share = sum(rollout.decide(TENANTS[i % 100]).verify for i in range(n)) / n
    assert abs(share - 0.15) <= 5 * math.sqrt(0.15 * 0.85 / n)


def test_verify_samples_per_tenant_so_a_small_tenant_is_not_starved() -> None:
    """Issue 16, item 4: at the sample rate alone a tenant with a few requests an hour may go
    unverified for hours; each tenant gets at least one verification per interval."""
    now = [0.0]
    rollout = FlagRollout(
        l1_source(100), rng=lambda: 1.0, verify_min_interval=900, clock=lambda: now[0]
    )
    big, small = "workspace-1", "workspace-2"
    assert not rollout.decide(big).verify and not rollout.decide(small).verify
    for minute in range(1, 15):
        now[0] = minute * 60.0
        assert not any(rollout.decide(big).verify for _ in range(100)), "the sample says no"
    now[0] = 900.0
    assert rollout.decide(small).verify, "due again after the interval"
    assert not rollout.decide(small).verify
    assert rollout.decide(big).verify and not rollout.decide(big).verify
    sampled = FlagRollout(l1_source(100), rng=lambda: 0.0, clock=lambda: now[0])
    assert all(sampled.decide(big).verify for _ in range(10)), "the sample still applies"
    never = FlagRollout(l1_source(100), rng=lambda: 1.0, verify_min_interval=0)
    assert not never.decide(small).verify


def test_verify_off_when_the_flag_is_off() -> None:
    payload = stage_payload("l1-100")
    feature(payload, FLAG_L1_VERIFY)["enabled"] = False
    rollout = FlagRollout(OfflineFlags(json.dumps(payload)), rng=lambda: 0.0)
    assert not any(rollout.decide(t).verify for t in TENANTS[:100])


def test_verify_with_constraints_is_evaluated_by_the_sdk() -> None:
    payload = stage_payload("l1-100")
    verify = feature(payload, FLAG_L1_VERIFY)
    verify["strategies"][0]["parameters"]["rollout"] = "100"
    verify["strategies"][0]["constraints"] = [
        {"contextName": "workspaceId", "operator": "IN", "values": ["workspace-3"]}
    ]
    source = OfflineFlags(json.dumps(payload))
    assert source.snapshot.verify_rate is None
    rollout = FlagRollout(source, rng=lambda: 1.0)
    assert rollout.decide("workspace-3").verify
    assert not rollout.decide("workspace-4").verify


# --- configuration -----------------------------------------------------------------


def test_rollout_from_env_offline_uses_the_named_stage() -> None:
    rollout = rollout_from_env(environ={"CACHEGATE_STAGE": "dark-launch"})
    assert isinstance(rollout.source, OfflineFlags)
    assert rollout.decide("workspace-1") == SHADOW_SHADOW
    assert rollout_from_env(environ={}).decide("workspace-1") is OFF
    with pytest.raises(UnknownStageError):
        rollout_from_env(environ={"CACHEGATE_STAGE": "typo"})


def test_rollout_from_env_connected_holds_the_bootstrap_until_started() -> None:
    environ = {"UNLEASH_URL": "http://127.0.0.1:9/api", "UNLEASH_API_TOKEN": "default:dev.x"}
    rollout = rollout_from_env(stage_path("l1-100"), environ=environ)
    assert isinstance(rollout.source, UnleashFlags)
    assert rollout.decide("workspace-1").l1 is Mode.SERVE
    with pytest.raises(ValueError, match="UNLEASH_API_TOKEN"):
        rollout_from_env(environ={"UNLEASH_URL": "http://127.0.0.1:9/api"})


@pytest.mark.anyio
async def test_a_connected_source_closed_before_start_never_starts() -> None:
    settings_ = UnleashSettings(url="http://127.0.0.1:9/api", api_token="t", instance_id="closed")
    source = UnleashFlags.connect(settings_, bootstrap=stage_path("l2"))
    await source.aclose()
    await source.start(wait=0.5)
    assert not source.started
    assert source.polls == 0
    assert FlagRollout(source).decide("workspace-1") == SHADOW_SERVE


def test_settings_from_env() -> None:
    settings_ = UnleashSettings.from_env(
        {
            "UNLEASH_URL": "http://u/api",
            "UNLEASH_API_TOKEN": "t",
            "UNLEASH_REFRESH_INTERVAL": "3",
            "UNLEASH_ENVIRONMENT": "production",
        }
    )
    assert (settings_.refresh_interval, settings_.environment) == (3, "production")
    for bad in ("0", "1.5", "soon"):
        with pytest.raises(ValueError, match="UNLEASH_REFRESH_INTERVAL"):
            UnleashSettings.from_env(
                {"UNLEASH_URL": "u", "UNLEASH_API_TOKEN": "t", "UNLEASH_REFRESH_INTERVAL": bad}
            )
