"""The controller against the real Unleash server: advance, hold, failure limits, rollback, the
kill switch, dry runs and restarts. Figures come from a table (the real Prometheus is in
`test_autopilot_e2e.py`); time since the stage began is moved with an injected clock.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from support.unleash_server import UnleashServer, unleash_server  # noqa: F401

from cachegate import cli
from cachegate.autopilot.controller import KILL_SWITCH, Action, Controller
from cachegate.autopilot.gates import MetricsUnavailable
from cachegate.autopilot.plan import Plan, parse_plan
from cachegate.autopilot.unleash import UnleashStages
from cachegate.flags import apply_stage, read_stage, set_kill_switch

AGREE = 'kind=~"shadow|verify",outcome=~"match|mismatch"'
MISMATCH = 'kind=~"shadow|verify",outcome=~"mismatch"'
STORE = "store_failures"


def plan(**agreement: Any) -> Plan:
    return parse_plan(
        {
            "version": 1,
            "settle": "5s",
            "stages": [
                {"name": "off", "min_observation": "60s", "gates": ["traffic"]},
                {"name": "dark-launch", "min_observation": "60s", "gates": ["agreement"]},
                {"name": "l1-10", "min_observation": "60s", "gates": ["agreement", "store"]},
                {"name": "l1-100", "gates": ["agreement"]},
            ],
            "gates": {
                "traffic": {
                    "kind": "sample",
                    "count": "requests[$window]",
                    "min_sample": 100,
                    "window": "10m",
                },
                "agreement": {
                    "kind": "agreement",
                    "layer": "query_result",
                    "max_excess": 0.01,
                    "min_sample": 100,
                    "window": "30m",
                    "failure_limit": 2,
                    "on_fail": "rollback",
                    **agreement,
                },
                "store": {
                    "kind": "threshold",
                    "value": f"{STORE}[$window]",
                    "max": 0,
                    "window": "5m",
                    "on_fail": "rollback",
                },
            },
        },
        environ={},
    )


class Figures:
    """Prometheus' answers by query fragment; records every query asked."""

    def __init__(self) -> None:
        self.values: dict[str, float | None] = {}
        self.down = False
        self.asked: list[str] = []

    def query(self, expr: str, *, at: float | None = None) -> float | None:
        self.asked.append(expr)
        if self.down:
            raise MetricsUnavailable("connection refused")
        for fragment, value in self.values.items():
            if fragment in expr:
                return value
        return None

    def healthy(self) -> None:
        self.values = {"requests": 500.0, AGREE: 2000.0, MISMATCH: 0.0, STORE: 0.0}


class Clock:
    """Real time plus a shift, so that 'seconds since the stage began' can be chosen."""

    def __init__(self) -> None:
        self.shift = 0.0

    def __call__(self) -> float:
        return time.time() + self.shift


@pytest.fixture
def setup(
    unleash_server: UnleashServer,  # noqa: F811
) -> tuple[Controller, Figures, Clock, UnleashStages]:
    server = unleash_server
    apply_stage(server.url, server.admin_token, "off")
    stages = UnleashStages(server.url, server.admin_token)
    figures, clock = Figures(), Clock()
    return Controller(plan(), figures, stages, clock=clock), figures, clock, stages


Setup = tuple[Controller, Figures, Clock, UnleashStages]


def test_advances_only_after_the_observation_time_and_passing_gates(setup: Setup) -> None:
    controller, figures, clock, stages = setup
    figures.healthy()
    clock.shift = 2
    assert controller.step().code == "settling"
    clock.shift = 30
    decision = controller.step()
    assert (decision.action, decision.code) == (Action.HOLD, "observing")
    clock.shift = 120
    decision = controller.step()
    assert (decision.action, decision.target, decision.applied) == (
        Action.ADVANCE,
        "dark-launch",
        True,
    )
    assert stages.read().stage == "dark-launch"


def test_no_data_and_unreachable_metrics_hold(setup: Setup) -> None:
    controller, figures, clock, stages = setup
    clock.shift = 3600
    decision = controller.step()
    assert (decision.action, decision.code) == (Action.HOLD, "gate_holding")
    assert "no data" in decision.reason
    figures.values = {"requests": 3.0}
    assert "too little traffic" in controller.step().reason
    figures.down = True
    decision = controller.step()
    assert (decision.action, decision.code) == (Action.HOLD, "metrics_unavailable")
    assert stages.read().stage == "off"


def test_failure_limit_then_rollback_and_a_restart_does_not_repeat_it(setup: Setup) -> None:
    controller, figures, clock, stages = setup
    apply_stage(stages.url, stages.admin_token, "l1-10")
    figures.healthy()
    figures.values[MISMATCH] = 200.0
    clock.shift = 600
    first = controller.step()
    assert (first.action, first.code) == (Action.HOLD, "gate_failing")
    assert "agreement below bound" in first.reason and "(1/2)" in first.reason
    second = controller.step()
    assert (second.action, second.target, second.applied) == (Action.ROLLBACK, "dark-launch", True)
    assert "agreement below bound" in second.reason
    assert stages.read().stage == "dark-launch"

    # A new process right after the rollback: the window starts at the rollback, so the bad
    # figures of l1-10 are not judged again, and nothing moves while the stage settles.
    restarted = Controller(plan(), figures, stages, clock=time.time)
    time.sleep(1.0)
    assert restarted.step().code == "settling"
    figures.asked.clear()
    restarted.clock = lambda: (stages.read().changed_at or 0) + 12
    decision = restarted.step()
    assert decision.action is Action.HOLD and decision.code == "gate_failing"
    assert figures.asked and all("[7s]" in query for query in figures.asked)
    assert stages.read().stage == "dark-launch"


def test_a_gate_can_roll_back_further_than_the_stage_before(setup: Setup) -> None:
    _, figures, clock, stages = setup
    controller = Controller(plan(rollback_to="off"), figures, stages, clock=clock)
    apply_stage(stages.url, stages.admin_token, "l1-10")
    figures.healthy()
    figures.values[MISMATCH] = 200.0
    clock.shift = 600
    assert controller.step().action is Action.HOLD
    decision = controller.step()
    assert (decision.action, decision.target, decision.applied) == (Action.ROLLBACK, "off", True)
    assert stages.read().stage == "off"


def test_the_kill_switch_wins(setup: Setup) -> None:
    controller, figures, clock, stages = setup
    figures.healthy()
    clock.shift = 3600
    set_kill_switch(stages.url, stages.admin_token, on=True)
    decision = controller.step()
    assert (decision.action, decision.code) == (Action.HOLD, "kill_switch")
    state = stages.read()
    assert (state.stage, state.kill_switch) == ("off", True)


def test_dry_run_and_complete(setup: Setup) -> None:
    controller, figures, clock, stages = setup
    figures.healthy()
    clock.shift = 3600
    controller.dry_run = True
    decision = controller.step()
    assert (decision.action, decision.applied, decision.dry_run) == (Action.ADVANCE, False, True)
    assert stages.read().stage == "off"
    apply_stage(stages.url, stages.admin_token, "l1-100")
    controller.dry_run = False
    assert controller.step().action is Action.COMPLETE
    assert stages.read().stage == "l1-100"


def test_manual_rollback(setup: Setup) -> None:
    controller, _, _, stages = setup
    apply_stage(stages.url, stages.admin_token, "l1-10")
    assert controller.rollback().target == "dark-launch"
    assert stages.read().stage == "dark-launch"
    assert controller.rollback(kill_switch=True).target == KILL_SWITCH
    assert stages.read().kill_switch
    apply_stage(stages.url, stages.admin_token, "off")
    assert controller.rollback().target == KILL_SWITCH


def test_cli_status_plan_and_errors(
    unleash_server: UnleashServer,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
) -> None:
    server = unleash_server
    apply_stage(server.url, server.admin_token, "dark-launch")
    monkeypatch.setenv(cli.ADMIN_TOKEN_ENV, server.admin_token)
    args = ["--prometheus", "http://127.0.0.1:9", "--unleash-url", server.url, "--json"]
    assert cli.main(["rollout", "status", *args]) == cli.OK
    record = json.loads(capsys.readouterr().out)
    assert (record["stage"], record["action"], record["code"]) in {
        ("dark-launch", "hold", "metrics_unavailable"),
        ("dark-launch", "hold", "settling"),
    }
    assert cli.main(["rollout", "step", *args, "--dry-run"]) == cli.OK
    assert read_stage(server.url, server.admin_token).stage == "dark-launch"
    assert cli.main(["rollout", "plan"]) == cli.OK
    assert "l1-agreement" in capsys.readouterr().out
    bad = tmp_path / "plan.toml"
    bad.write_text("version = 3\n", encoding="utf-8")
    errors: list[str] = []

    class Err:
        def write(self, text: str) -> None:
            errors.append(text)

    code = cli.main(["rollout", "plan", "--plan", str(bad)], err=Err())  # type: ignore[arg-type]
    assert code == cli.USAGE and "'version' must be 1" in "".join(errors)
    assert cli.main(["rollout", "rollback", "--unleash-url", server.url, "--json"]) == cli.OK
    assert json.loads(capsys.readouterr().out)["target"] == "off"
    assert read_stage(server.url, server.admin_token).stage == "off"


def test_cli_run_exports_metrics_and_gives_up_at_its_timeout(
    unleash_server: UnleashServer,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prometheus_client import REGISTRY
    from support.redis_server import free_port

    server = unleash_server
    apply_stage(server.url, server.admin_token, "dark-launch")
    monkeypatch.setenv(cli.ADMIN_TOKEN_ENV, server.admin_token)
    port = free_port()
    args = ["--prometheus", f"http://127.0.0.1:{free_port()}", "--unleash-url", server.url]
    options = ["--json", "--interval", "0.2", "--timeout", "1", "--metrics-port", str(port)]
    assert cli.main(["rollout", "run", *args, *options]) == cli.FAILED
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) >= 2 and {r["action"] for r in records} == {"hold"}
    assert read_stage(server.url, server.admin_token).stage == "dark-launch"
    held = (
        REGISTRY.get_sample_value(
            "cachegate_autopilot_decisions_total", {"action": "hold", "reason": "settling"}
        )
        or 0.0
    )
    unavailable = (
        REGISTRY.get_sample_value(
            "cachegate_autopilot_decisions_total",
            {"action": "hold", "reason": "metrics_unavailable"},
        )
        or 0.0
    )
    assert held + unavailable >= len(records)
    exposed = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert "cachegate_autopilot_stage 1.0" in exposed
