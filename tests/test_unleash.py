"""End to end at the flag level against a real Unleash server (see `support/unleash_server.py`).

Stages are applied with `cachegate.flags.apply_stage`, then flags are changed through the admin
API the way a person does in the dashboard; a connected `FlagRollout` (refresh interval 1 s) must
follow, keep its last state when the server goes away, and use its bootstrap file when the
server is down at start. Waits poll with a deadline; none sleeps a fixed time.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from functools import cache

import anyio
import pytest
from support.unleash_server import UnleashServer, free_port, unleash_server  # noqa: F401

from cachegate.flags import (
    FLAG_KILL_SWITCH,
    FLAG_L1_SERVE,
    FlagAdminError,
    FlagRollout,
    OfflineFlags,
    UnleashFlags,
    UnleashSettings,
    apply_stage,
    show_flags,
    stage_path,
)
from cachegate.rollout import OFF, Mode

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

TENANTS = [f"workspace-{i}" for i in range(500)]
DEADLINE = 15.0


async def eventually(check: Callable[[], bool], what: str, within: float = DEADLINE) -> None:
    """Poll `check` until it holds; fail with `what` after `within` seconds."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within} s: {what}")
        await anyio.sleep(0.1)


def modes(rollout: FlagRollout) -> list[tuple[Mode, Mode]]:
    decisions = (rollout.decide(t) for t in TENANTS)
    return [(d.l1, d.l2) for d in decisions]


@cache
def expected(stage: str) -> list[tuple[Mode, Mode]]:
    """The modes of `TENANTS` under a stage file, evaluated offline."""
    return modes(FlagRollout(OfflineFlags.from_file(stage_path(stage))))


def serving(rollout: FlagRollout) -> set[str]:
    return {t for t in TENANTS if rollout.decide(t).l1 is Mode.SERVE}


async def connected(
    settings: UnleashSettings, bootstrap: str
) -> tuple[FlagRollout, UnleashFlags, Callable[[], Awaitable[None]]]:
    source = UnleashFlags.connect(settings, bootstrap=stage_path(bootstrap))
    rollout = FlagRollout(source)
    await rollout.start(wait=10)
    assert source.started
    return rollout, source, rollout.aclose


def test_apply_stage_is_idempotent_and_shown(unleash_server: UnleashServer) -> None:  # noqa: F811
    server = unleash_server
    apply_stage(server.url, server.admin_token, "dark-launch")
    events = server.event_count()
    apply_stage(server.api_url, server.admin_token, "dark-launch")
    assert server.event_count() == events, "a second apply changed the server"

    table = show_flags(server.url, server.admin_token)
    assert "context field workspaceId: present, usable as stickiness" in table
    assert "development: stage dark-launch" in table
    assert "cachegate.l1.shadow    development  on     100% by workspaceId" in table

    apply_stage(server.url, server.admin_token, "l1-50")
    assert server.event_count() > events
    table = show_flags(server.url, server.admin_token)
    assert "development: stage l1-50" in table
    assert "cachegate.l1.serve     development  on     50% by workspaceId" in table


def test_apply_stage_reports_http_failures(unleash_server: UnleashServer) -> None:  # noqa: F811
    with pytest.raises(FlagAdminError, match="HTTP 401"):
        apply_stage(unleash_server.url, "not-a-token", "off")
    with pytest.raises(FlagAdminError, match="HTTP 404"):
        apply_stage(unleash_server.url, unleash_server.admin_token, "off", environment="nowhere")
    with pytest.raises(FlagAdminError, match="cannot reach Unleash"):
        apply_stage(f"http://127.0.0.1:{free_port()}", "token", "off")


async def test_connected_rollout_follows_the_dashboard(
    unleash_server: UnleashServer,  # noqa: F811
) -> None:
    server = unleash_server
    apply_stage(server.url, server.admin_token, "dark-launch")
    rollout, source, aclose = await connected(server.settings(), bootstrap="off")
    try:
        await eventually(lambda: modes(rollout) == expected("dark-launch"), "dark launch")
        assert {m for m in modes(rollout)} == {(Mode.SHADOW, Mode.SHADOW)}

        apply_stage(server.url, server.admin_token, "l1-10")
        await eventually(lambda: modes(rollout) == expected("l1-10"), "stage l1-10")
        at_10 = serving(rollout)
        assert abs(len(at_10) / len(TENANTS) - 0.10) < 0.07, len(at_10)

        server.set_rollout(FLAG_L1_SERVE, 50)
        await eventually(lambda: modes(rollout) == expected("l1-50"), "rollout raised to 50 %")
        at_50 = serving(rollout)
        assert at_10 < at_50
        assert abs(len(at_50) / len(TENANTS) - 0.50) < 0.12, len(at_50)

        server.switch(FLAG_KILL_SWITCH, on=True)
        await eventually(lambda: all(rollout.decide(t) is OFF for t in TENANTS), "kill switch")
        server.switch(FLAG_KILL_SWITCH, on=False)
        await eventually(lambda: serving(rollout) == at_50, "kill switch released")

        await eventually(lambda: source.snapshot.settled, "the new state settles (memoised)")
        before = modes(rollout)
        polls = source.polls
        server.stop()
        try:
            await eventually(lambda: source.polls >= polls + 2, "two polls on a stopped server")
            assert modes(rollout) == before
        finally:
            server.start()
    finally:
        await aclose()


async def test_server_down_at_start_uses_the_bootstrap_file() -> None:
    settings = UnleashSettings(
        url=f"http://127.0.0.1:{free_port()}/api",
        api_token="default:development.none",
        refresh_interval=1,
        request_timeout=1,
        instance_id="test-down",
        disable_metrics=True,
    )
    rollout, source, aclose = await connected(settings, bootstrap="l1-10")
    try:
        assert modes(rollout) == expected("l1-10")
        polls = source.polls
        await eventually(lambda: source.polls >= polls + 2, "two polls on a dead server")
        assert modes(rollout) == expected("l1-10")
    finally:
        await aclose()
