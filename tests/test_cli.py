"""The `cachegate` command line: parsing, clear errors and exit codes."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

import cachegate.flags.admin
import cachegate.flags.report
from cachegate.cli import FAILED, OK, USAGE, main, parser
from cachegate.demo import DEFAULT_EMBED_LATENCY, DEFAULT_LATENCY, DEFAULT_STAGE
from cachegate.flags import STAGES


def run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    code = main(argv, err=err)
    return code, err.getvalue()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CACHEGATE_STAGE", "UNLEASH_URL", "UNLEASH_API_TOKEN", "UNLEASH_ADMIN_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def test_serve_defaults_are_what_make_run_uses() -> None:
    args = parser().parse_args(["serve"])
    assert (args.host, args.port, args.stage) == ("127.0.0.1", 8000, None)
    assert (args.latency, args.embed_latency) == (DEFAULT_LATENCY, DEFAULT_EMBED_LATENCY)
    assert DEFAULT_STAGE in STAGES


def test_serve_without_a_chosen_stage_bootstraps_unleash_off_and_offline_at_the_default(
    tmp_path: Path,
) -> None:
    """A connected start without a persisted state must not invent `l1-100` (issue 16, item 1):
    the bootstrap is `off` unless the operator chose a stage; offline, `make run` serves."""
    from cachegate.demo.service import DemoConfig, build_demo
    from cachegate.rollout import OFF

    environ = {
        "UNLEASH_URL": "http://127.0.0.1:9/api",
        "UNLEASH_API_TOKEN": "client-token",
        "CACHEGATE_FLAG_STATE_FILE": str(tmp_path / "flags.json"),
    }
    connected = build_demo(DemoConfig(), environ=environ, registry=CollectorRegistry())
    assert connected.stages.rollout.decide("ws-001") is OFF
    assert "bootstrap stage off" in connected.parts["flags"]
    chosen = build_demo(DemoConfig(stage="l2"), environ=environ, registry=CollectorRegistry())
    assert chosen.stages.rollout.decide("ws-001").l2 == "serve"
    offline = build_demo(DemoConfig(), environ={}, registry=CollectorRegistry())
    assert offline.stages.stage == DEFAULT_STAGE


def test_serve_stage_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHEGATE_STAGE", "dark-launch")
    assert parser().parse_args(["serve"]).stage == "dark-launch"


def test_replay_options_parse() -> None:
    argv = ["replay", "--requests", "50", "--duration", "3", "--concurrency", "4"]
    args = parser().parse_args(
        [*argv, "--seed", "9", "--stages", "off,l2", "--json", "--markdown", "out.md"]
    )
    assert (args.requests, args.duration, args.concurrency, args.seed) == (50, 3.0, 4, 9)
    assert (args.stages, args.json, args.markdown) == ("off,l2", "-", "out.md")
    assert parser().parse_args(["replay"]).stages == ",".join(STAGES)


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--latency", "-1"],
        ["replay", "--requests", "0"],
        ["replay", "--write-ratio", "1.5"],
        ["flags", "apply", "--stage", "l2"],
        ["flags"],
        ["nope"],
    ],
)
def test_bad_command_lines_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == USAGE
    assert "usage: cachegate" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--stage", "l1-200"],
        ["replay", "--stages", "off,l1-200"],
        ["flags", "apply", "--stage", "l1-200", "--unleash-url", "http://127.0.0.1:9"],
    ],
)
def test_unknown_stage_lists_the_stages(argv: list[str]) -> None:
    code, err = run(argv)
    assert code == USAGE
    assert "'l1-200'" in err
    assert ", ".join(STAGES) in err
    assert err.startswith("cachegate ")


@pytest.mark.parametrize(
    "argv",
    [
        ["flags", "apply", "--stage", "l2", "--unleash-url", "http://127.0.0.1:9"],
        ["flags", "show", "--unleash-url", "http://127.0.0.1:9"],
        ["replay", "--unleash-url", "http://127.0.0.1:9"],
    ],
)
def test_missing_admin_token_names_the_variable(argv: list[str]) -> None:
    code, err = run(argv)
    assert code == USAGE
    assert "UNLEASH_ADMIN_TOKEN" in err


def test_flags_apply_passes_stage_token_and_target(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[tuple[object, ...]] = []

    def apply_stage(url: str, token: str, stage: str, *, project: str, environment: str) -> None:
        calls.append((url, token, stage, project, environment))

    monkeypatch.setattr(cachegate.flags.admin, "apply_stage", apply_stage)
    monkeypatch.setenv("UNLEASH_ADMIN_TOKEN", "admin-token")
    argv = ["flags", "apply", "--stage", "l1-10", "--unleash-url", "http://127.0.0.1:4242"]
    code, _ = run([*argv, "--environment", "production"])
    assert code == OK
    assert calls == [("http://127.0.0.1:4242", "admin-token", "l1-10", "default", "production")]
    assert "stage l1-10" in capsys.readouterr().out


def test_flags_show_prints_the_servers_table(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def show_flags(url: str, token: str, *, project: str) -> str:
        return f"table of {project} at {url}"

    monkeypatch.setattr(cachegate.flags.report, "show_flags", show_flags)
    monkeypatch.setenv("UNLEASH_ADMIN_TOKEN", "admin-token")
    code, _ = run(["flags", "show", "--unleash-url", "http://127.0.0.1:4242"])
    assert code == OK
    assert capsys.readouterr().out == "table of default at http://127.0.0.1:4242\n"


@pytest.mark.parametrize("action", ["apply", "show"])
def test_unreachable_unleash_exits_1(action: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNLEASH_ADMIN_TOKEN", "admin-token")
    argv = ["flags", action, "--unleash-url", "http://127.0.0.1:9"]
    code, err = run(argv + (["--stage", "l2"] if action == "apply" else []))
    assert code == FAILED
    assert "cannot reach Unleash" in err
    assert "admin-token" not in err


def test_replay_refuses_a_non_loopback_target() -> None:
    code, err = run(["replay", "--url", "http://10.0.0.1:8000"])
    assert code == USAGE
    assert "loopback" in err


def test_serve_with_unleash_but_no_client_token_says_which_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("UNLEASH_URL", "http://127.0.0.1:9/api")
    code, err = run(["serve", "--port", "9"])
    assert code == USAGE
    assert "UNLEASH_API_TOKEN" in err


def test_replay_through_unleash_applies_each_stage(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    applied: list[str] = []

    def apply_stage(url: str, token: str, stage: str, **where: str) -> None:
        applied.append(stage)

    async def fake_replay(config: object, *, switcher: object, progress: object) -> list[object]:
        from cachegate.demo.replay import ReplayConfig, Switcher

        assert isinstance(config, ReplayConfig)
        assert (config.query_cost, config.requests) == (0.02, 400)
        from cachegate.demo.replay import UnleashSwitcher

        move: Switcher = switcher(None)  # type: ignore[operator]
        assert isinstance(move, UnleashSwitcher) and move.timeout == 7
        for stage in config.stages:  # waiting for the target: tests/test_flag_state.py
            await asyncio.to_thread(move.apply, stage)
        return []

    monkeypatch.setattr(cachegate.flags.admin, "apply_stage", apply_stage)
    monkeypatch.setattr("cachegate.demo.replay.replay", fake_replay)
    monkeypatch.setenv("UNLEASH_ADMIN_TOKEN", "admin-token")
    argv = ["replay", "--unleash-url", "http://127.0.0.1:4242", "--stages", "dark-launch,l2"]
    code, _ = run([*argv, "--stage-timeout", "7", "--query-cost", "0.02", "--json"])
    assert code == OK
    assert applied == ["dark-launch", "l2"]
    assert json.loads(capsys.readouterr().out)["stages"] == []
