"""Kill switch time to effect, and what the 1 s poll costs the Unleash server.

Runs against the suite's real Unleash server (`tests/support/unleash_server.py`: npm
`unleash-server` on the local PostgreSQL), so `make bench` runs it with the project's `.venv` in
a subprocess (`python -m benchmarks.kill_switch` prints JSON). Measured:

- time to effect: a connected `FlagRollout` with the default settings (`UnleashSettings`'
  default poll) serves at `l1-100`; the kill switch is turned on through the admin API; the time
  from the admin call to the first `decide()` that says L1 off. Several rounds.
- server cost: the Unleash process's CPU time per second (from /proc) with N connected clients
  polling every 15 s (the old default) and every 1 s (the new one); polls of unchanged flags are
  answered 304 (ETag).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TENANT = "workspace-0001"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(*, rounds: int = 5, clients: int = 20, window: float = 20.0) -> dict[str, Any]:
    """Time to effect per round (seconds) and the server's CPU per poll interval."""
    sys.path.insert(0, str(REPO / "tests"))
    from support.unleash_server import running_unleash

    from cachegate.flags import (
        FlagRollout,
        UnleashFlags,
        UnleashSettings,
        apply_stage,
        set_kill_switch,
        stage_path,
    )
    from cachegate.rollout import Mode

    with running_unleash() as server:
        apply_stage(server.url, server.admin_token, "l1-100")

        def settings(**overrides: Any) -> UnleashSettings:
            values: dict[str, Any] = {
                "url": server.api_url,
                "api_token": server.client_token,
                "instance_id": f"bench-{uuid.uuid4().hex[:8]}",
                "disable_metrics": True,
            }
            values.update(overrides)
            return UnleashSettings(**values)

        default = settings()
        source = UnleashFlags.connect(default, bootstrap=stage_path("l1-100"))
        rollout = FlagRollout(source)
        asyncio.run(rollout.start(wait=10))

        def wait_for(mode: Mode, limit: float = 30.0) -> float:
            start = time.perf_counter()
            while rollout.decide(TENANT).l1 is not mode:
                if time.perf_counter() - start > limit:
                    raise RuntimeError(f"L1 not {mode} within {limit} s")
                time.sleep(0.002)
            return time.perf_counter() - start

        effects = []
        try:
            for _ in range(rounds):
                set_kill_switch(server.url, server.admin_token, on=False)
                wait_for(Mode.SERVE)
                time.sleep(0.3)
                start = time.perf_counter()
                set_kill_switch(server.url, server.admin_token, on=True)
                wait_for(Mode.OFF)
                effects.append(time.perf_counter() - start)
        finally:
            source.close()
        set_kill_switch(server.url, server.admin_token, on=False)

        assert server._process is not None
        pid = server._process.pid
        cost: dict[str, float] = {}
        for interval in (15, 1):
            sources = [
                UnleashFlags.connect(settings(refresh_interval=interval)) for _ in range(clients)
            ]
            for each in sources:
                asyncio.run(each.start(wait=10))
            time.sleep(2.0)
            before, polls = _cpu_seconds(pid), sum(each.polls for each in sources)
            time.sleep(window)
            used = _cpu_seconds(pid) - before
            polled = sum(each.polls for each in sources) - polls
            for each in sources:
                each.close()
            cost[f"cpu_per_s_{interval}s"] = used / window
            cost[f"polls_per_s_{interval}s"] = polled / window
    return {
        "refresh_interval": default.refresh_interval,
        "effect_seconds": effects,
        "clients": clients,
        "window_seconds": window,
        **cost,
    }


def main() -> int:
    quick = "--quick" in sys.argv
    result = measure(rounds=3 if quick else 7, window=8.0 if quick else 20.0)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
