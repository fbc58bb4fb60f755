"""With the default configuration, a kill switch (or an autopilot rollback) reaches requests in
about a second: the SDK polls every second. The figure itself is in `make bench`
(`benchmarks/kill_switch.py`); here only the default and the behaviour, with a loose bound."""

from __future__ import annotations

import time
import uuid

import anyio
import pytest
from support.unleash_server import UnleashServer, unleash_server  # noqa: F401

from cachegate.flags import (
    FlagRollout,
    UnleashFlags,
    UnleashSettings,
    apply_stage,
    set_kill_switch,
    stage_path,
)
from cachegate.rollout import Mode

pytestmark = pytest.mark.anyio


def test_the_default_poll_is_one_second() -> None:
    assert UnleashSettings(url="u", api_token="t").refresh_interval == 1
    settings = UnleashSettings.from_env({"UNLEASH_URL": "u", "UNLEASH_API_TOKEN": "t"})
    assert settings.refresh_interval == 1


async def test_kill_switch_stops_serving_with_the_default_settings(
    unleash_server: UnleashServer,  # noqa: F811
) -> None:
    server = unleash_server
    apply_stage(server.url, server.admin_token, "l1-100")
    settings = UnleashSettings(
        url=server.api_url,
        api_token=server.client_token,
        instance_id=f"test-{uuid.uuid4().hex[:8]}",
        disable_metrics=True,
    )
    rollout = FlagRollout(UnleashFlags.connect(settings, bootstrap=stage_path("l1-100")))
    await rollout.start(wait=10)
    try:
        assert rollout.decide("workspace-1").l1 is Mode.SERVE
        set_kill_switch(server.url, server.admin_token, on=True)
        # Loose on purpose (a busy machine): with the old 15 s default this took 15-30 s.
        deadline = time.monotonic() + 10.0
        while rollout.decide("workspace-1").l1 is not Mode.OFF:
            assert time.monotonic() < deadline, "the kill switch did not take effect"
            await anyio.sleep(0.05)
    finally:
        await rollout.aclose()
        apply_stage(server.url, server.admin_token, "off")
