"""`cachegate replay` against the demo served by uvicorn: per-stage numbers that add up."""

from __future__ import annotations

import asyncio
import io
import json
import random
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from prometheus_client import CollectorRegistry

from cachegate.cli import main
from cachegate.demo.replay import (
    DEFAULT_STAGES,
    Percentiles,
    Progress,
    ReplayConfig,
    ReplayError,
    Samples,
    StageResult,
    check_loopback,
    render_json,
    render_markdown,
    render_text,
    replay,
)
from cachegate.demo.service import DemoConfig, build_demo
from cachegate.demo.workload import (
    QUESTIONS,
    Catalog,
    CreateSession,
    DeleteSession,
    Mix,
    Query,
    UpdateSession,
    Workload,
    Zipf,
    near_duplicate,
)
from cachegate.keys import Normalization, normalize_text

CATALOG = Catalog(workspaces=4, clients=3)
CONCURRENCY = 6
ALLOWED = {
    "off": {"bypass"},
    "dark-launch": {"shadow-hit", "shadow-miss"},
    "l2": {"shadow-hit", "shadow-miss"},
    "l1-10": {"hit", "miss", "shadow-hit", "shadow-miss"},
    "l1-50": {"hit", "miss", "shadow-hit", "shadow-miss"},
    "l1-100": {"hit", "miss"},
}


@pytest.fixture(scope="module")
def target() -> Iterator[str]:
    """The demo on a free loopback port, served by uvicorn in a thread."""
    service = build_demo(
        DemoConfig(stage="off", latency=0.02, embed_latency=0.005, catalog=CATALOG),
        environ={},
        registry=CollectorRegistry(),
    )
    config = uvicorn.Config(service.app, host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def results(target: str) -> dict[str, StageResult]:
    config = ReplayConfig(
        url=target,
        requests=60,
        concurrency=CONCURRENCY,
        seed=7,
        catalog=CATALOG,
        mix=Mix(write_ratio=0.1),
    )
    stream = io.StringIO()
    measured = asyncio.run(replay(config, progress=Progress(stream, live=False)))
    assert [r.stage for r in measured] == list(DEFAULT_STAGES)
    assert stream.getvalue().count("requests in") == len(DEFAULT_STAGES)
    return {r.stage: r for r in measured}


@pytest.mark.parametrize("stage", DEFAULT_STAGES)
def test_every_stage_adds_up(results: dict[str, StageResult], stage: str) -> None:
    r = results[stage]
    assert r.errors == 0
    assert r.queries + r.writes == 60
    assert set(r.paths) <= ALLOWED[stage]
    assert r.invalidations == r.writes
    verify, noise = r.agreement["l1-verify"], r.agreement["l1-noise"]
    # Every answer not served from L1 was computed once; background checks computed again.
    assert r.model_calls == r.queries - r.paths.get("hit", 0) + verify.compared + noise.compared
    assert r.l1.shadow_hits + r.l1.shadow_misses == r.paths.get("shadow-hit", 0) + r.paths.get(
        "shadow-miss", 0
    )
    assert r.l1.hits == r.paths.get("hit", 0)
    assert r.l1.calls_avoided <= r.l1.hits
    assert r.l1.cost_avoided == pytest.approx(r.l1.calls_avoided * 0.017)
    for agreement in r.agreement.values():
        # A write landing while a comparison's fresh answer is computed changes the answer:
        # a race with that write, at most one per other request in flight. Without writes
        # there is none (test_without_writes_cached_answers_always_agree_with_fresh).
        assert agreement.error == 0
        assert agreement.mismatch <= r.writes * (CONCURRENCY - 1)
    assert r.latency["all"].count == r.queries


def test_without_writes_cached_answers_always_agree_with_fresh(target: str) -> None:
    config = ReplayConfig(
        url=target,
        stages=("dark-launch", "l1-100", "l1-50"),
        requests=40,
        concurrency=4,
        seed=11,
        catalog=CATALOG,
        mix=Mix(write_ratio=0.0),
    )
    measured = asyncio.run(replay(config))
    compared = sum(a.compared for r in measured for a in r.agreement.values())
    assert compared > 0
    for r in measured:
        assert r.writes == 0
        assert all(a.match == a.compared for a in r.agreement.values())


def test_off_serves_nothing_cached(results: dict[str, StageResult]) -> None:
    off = results["off"]
    assert off.l1 == off.l2
    assert off.l1.hits == off.l1.shadow_hits == off.l1.misses == 0
    assert off.cost_avoided == 0
    assert off.embed_calls == off.model_calls == off.queries


def test_dark_launch_looks_up_but_serves_fresh(results: dict[str, StageResult]) -> None:
    dark = results["dark-launch"]
    assert dark.paths.get("hit", 0) == 0
    assert dark.l1.hits == dark.l2.hits == 0
    assert dark.l1.shadow_hits > 0
    assert dark.l2.shadow_hits + dark.l2.shadow_misses == dark.model_calls
    assert dark.embed_calls == dark.model_calls
    assert dark.cost_avoided == 0
    shadow = dark.agreement["l1-shadow"]
    # every shadow hit is compared, or left out because a write raced its fresh answer
    assert shadow.compared + shadow.ignored == dark.l1.shadow_hits
    assert shadow.compared > 0


def test_l2_serves_embeddings_from_the_cache(results: dict[str, StageResult]) -> None:
    for stage in ("l2", "l1-10", "l1-50", "l1-100"):
        r = results[stage]
        assert r.l2.hits + r.l2.misses == r.model_calls
        assert r.embed_calls == r.l2.misses
        assert r.l2.calls_avoided == r.l2.hits
    assert results["l2"].l2.hits > 0
    assert results["l2"].paths.get("hit", 0) == 0


def test_l1_at_100_percent_serves_hits_faster(results: dict[str, StageResult]) -> None:
    full = results["l1-100"]
    assert full.l1.hits > 0
    assert full.served_from_cache == full.paths["hit"] / full.queries
    assert full.latency["hit"].p50 < full.latency["miss"].p50
    assert full.cost_saved is not None and full.cost_saved > 0


def test_reports_hold_every_stage_and_no_tenant_or_question(
    results: dict[str, StageResult],
) -> None:
    ordered = list(results.values())
    config = ReplayConfig(catalog=CATALOG)
    text, markdown = render_text(ordered), render_markdown(ordered)
    document = json.loads(render_json(ordered, config))
    assert [s["stage"] for s in document["stages"]] == list(DEFAULT_STAGES)
    assert document["stages"][-1]["l1"]["hit_rate"] == results["l1-100"].l1.hit_rate
    for stage in DEFAULT_STAGES:
        assert f"| {stage} |" in markdown
        assert any(line.startswith(stage) for line in text.splitlines())
    for output in (text, markdown, json.dumps(document)):
        assert "ws-0" not in output and "client-0" not in output
        assert not any(question in output for question in QUESTIONS)


def test_cli_replay_prints_json_and_exits_zero(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = io.StringIO()
    argv = ["replay", "--url", target, "--stages", "off,l1-100", "--requests", "20"]
    argv += ["--workspaces", "4", "--clients", "3", "--json", "--quiet"]
    assert main(argv, err=err) == 0
    document = json.loads(capsys.readouterr().out)
    assert [s["stage"] for s in document["stages"]] == ["off", "l1-100"]
    assert err.getvalue() == ""


def test_cli_replay_reports_an_unreachable_target(unused_port: int) -> None:
    err = io.StringIO()
    argv = ["replay", "--url", f"http://127.0.0.1:{unused_port}", "--requests", "1", "--quiet"]
    assert main(argv, err=err) == 1
    assert "cannot reach" in err.getvalue()


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_a_target_without_cachegate_metrics_is_refused(target: str) -> None:
    config = ReplayConfig(url=target, requests=1, namespace="other")
    with pytest.raises(ReplayError, match="other_cache_hits_total"):
        asyncio.run(replay(config))


# --- units ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "http://localhost/", "http://[::1]:1"])
def test_loopback_targets_are_accepted(url: str) -> None:
    assert check_loopback(url) == url.rstrip("/")


@pytest.mark.parametrize(
    "url", ["http://10.0.0.1:8000", "https://example.com", "ftp://127.0.0.1", "127.0.0.1:80"]
)
def test_other_targets_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        check_loopback(url)


def test_percentiles_are_nearest_rank() -> None:
    p = Percentiles.of([float(i) for i in range(1, 101)])
    assert p == Percentiles(100, 50.0, 95.0, 50.5)
    assert Percentiles.of([]) is None
    assert Percentiles.of([2.0]) == Percentiles(1, 2.0, 2.0, 2.0)


def test_samples_subtract_and_filter_by_labels() -> None:
    text = '# TYPE x_total counter\nx_total{layer="a",kind="k"} 5\nx_total{layer="b",kind="k"} 2\n'
    before = Samples.parse(text.replace(" 5", " 1"))
    delta = Samples.parse(text) - before
    assert delta.total("x_total", layer="a") == 4
    assert delta.total("x_total", kind="k") == 4
    assert delta.total("x_total", layer="c") == 0
    assert delta.has("x_total") and not delta.has("y_total")


def test_workload_is_seeded_skewed_and_writes_only_what_it_created() -> None:
    def draw(seed: int) -> list[object]:
        workload = Workload(CATALOG, Mix(write_ratio=0.3), random.Random(seed))
        ops: list[object] = []
        for index in range(400):
            op = workload.next()
            if isinstance(op, CreateSession):
                workload.track(op.workspace, f"s{index}")
            ops.append(op)
        return ops

    first = draw(1)
    assert first == draw(1) != draw(2)
    created = {
        op.workspace + "/" + f"s{i}" for i, op in enumerate(first) if isinstance(op, CreateSession)
    }
    for op in first:
        if isinstance(op, UpdateSession | DeleteSession):
            assert f"{op.workspace}/{op.session_id}" in created
    writes = sum(not isinstance(op, Query) for op in first)
    assert 80 < writes < 160
    zipf, rng = Zipf(10, 1.1), random.Random(3)
    counts = [0] * 10
    for _ in range(5000):
        counts[zipf.draw(rng)] += 1
    assert counts[0] > counts[1] > counts[9] > 0


def test_near_duplicates_differ_only_in_case_and_spacing() -> None:
    rng = random.Random(5)
    for question in QUESTIONS:
        variant = near_duplicate(question, rng)
        assert variant != question
        assert normalize_text(variant, Normalization.LOOSE) == normalize_text(
            question, Normalization.LOOSE
        )
