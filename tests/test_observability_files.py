"""Dashboards, alert rules, runbooks and the metrics reference agree with each other and the code.

A renamed metric, a dashboard edited by hand, an alert without a runbook or without a firing and a
non-firing unit test, or a metrics table that forgot a metric fails here. `promtool` checks the rule
files and runs their unit tests; without it the tests that need it skip locally and fail under
`CI=true`.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from support.components import missing

from cachegate import metrics
from cachegate.autopilot.telemetry import AutopilotMetrics
from cachegate.flags import STAGES
from cachegate.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "alerts" / "cachegate.rules.yml"
RULE_TESTS = sorted((ROOT / "alerts" / "tests").glob("*.yml"))
DASHBOARDS = ROOT / "dashboards"
GENERATOR = DASHBOARDS / "generate.py"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
OBSERVABILITY = ROOT / "docs" / "observability.md"
RUNBOOK_URL = "https://github.com/cachegate/cachegate/blob/main/docs/runbooks.md#"


def promtool() -> str:
    """The promtool binary; skips the test locally when it is missing, fails it under CI."""
    path = shutil.which("promtool")
    if path is None:
        missing("promtool (Debian package `prometheus`)")
    assert path is not None
    return path


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run a command from the repository root, capturing its output."""
    return subprocess.run(
        [str(a) for a in args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


@functools.cache
def load_generator() -> ModuleType:
    """Import dashboards/generate.py (a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("cachegate_dashboards", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def rules() -> list[dict[str, Any]]:
    """Every rule (recording and alerting) of the rules file."""
    data = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    """The alerting rules."""
    return [rule for rule in rules() if "alert" in rule]


def recorded_names() -> set[str]:
    """The names of the recording rules."""
    return {rule["record"] for rule in rules() if "record" in rule}


def dashboard_files() -> list[Path]:
    """The checked-in dashboards."""
    return sorted(DASHBOARDS.glob("*.json"))


def dashboard_queries() -> Iterator[tuple[str, str]]:
    """(file, expression) of every panel query and template-variable selector in the dashboards."""
    generator = load_generator()
    for path in dashboard_files():
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        for expr in generator.iter_queries(dashboard):
            yield path.name, expr
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query":
                match = re.fullmatch(r"label_values\((.*),\s*\w+\)", variable["definition"])
                assert match, f"{path.name}: unexpected variable query {variable['definition']}"
                yield path.name, match.group(1)


def registered() -> CollectorRegistry:
    """A registry holding every CacheGate metric with at least one series each.

    Metrics whose label values are not known in advance (invalidation reasons, entry sizes per
    layer) have no series until first used; a probe series makes their sample names visible.
    """
    registry = CollectorRegistry()
    instance = Metrics(registry=registry, routes=("/ai/query",))
    autopilot = AutopilotMetrics(STAGES, registry=registry)
    for collector in [*vars(instance).values(), *vars(autopilot).values()]:
        # `_labelnames`: prometheus_client has no public accessor for a metric's label names.
        if isinstance(collector, Counter | Gauge | Histogram) and collector._labelnames:
            collector.labels(*("probe" for _ in collector._labelnames))
    return registry


def exposed_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every metric `Metrics` registers: exposed name -> (type, sorted label names)."""
    result: dict[str, tuple[str, tuple[str, ...]]] = {}
    for family in registered().collect():
        name = family.name + "_total" if family.type == "counter" else family.name
        labels = {key for sample in family.samples for key in sample.labels} - {"le"}
        result[name] = (family.type, tuple(sorted(labels)))
    return result


def sample_names() -> set[str]:
    """Every sample name `Metrics` exposes (`_total`, `_bucket`, `_count`, `_sum`...)."""
    return {sample.name for family in registered().collect() for sample in family.samples}


_STRINGS = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_OFFSETS = re.compile(r"\boffset\s+-?\w+")
_TOKENS = re.compile(
    r"(?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)|(?P<name>[A-Za-z_:][\w:]*)(?P<call>\s*\()?"
)
_KEYWORDS = {"and", "or", "unless", "bool", "inf", "nan", "offset", "group_left", "group_right"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords and labels excluded)."""
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGES.sub("", text)
    text = _LABEL_LISTS.sub("", text)
    text = _OFFSETS.sub("", text)
    names = set()
    for token in _TOKENS.finditer(text):
        name = token.group("name")
        if name and not token.group("call") and name.lower() not in _KEYWORDS:
            names.add(name)
    return names


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a markdown heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def test_metric_names_reads_selectors_not_functions_or_labels() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (job, le) (rate(a_bucket{x="y{z}"}[5m]))) > 0.05 '
        "and on (job) group_left () (b:rate5m * 1e-9 unless absent(c offset 5m)) "
        'or label_replace(d, "dst", "$1", "src", "(.*)")'
    )
    assert metric_names(expr) == {"a_bucket", "b:rate5m", "c", "d"}


def test_exposed_names_include_every_sample_suffix() -> None:
    names = sample_names()
    assert {
        "cachegate_cache_hits_total",
        "cachegate_query_duration_seconds_bucket",
        "cachegate_query_duration_seconds_count",
        "cachegate_query_duration_seconds_sum",
        "cachegate_store_breaker_open",
        "cachegate_cache_invalidations_total",
        "cachegate_entry_size_bytes_bucket",
    } <= names
    assert "cachegate_cache_hits" not in names


def test_promtool_checks_the_rules() -> None:
    result = run(promtool(), "check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    assert RULE_TESTS, "no rule unit tests in alerts/tests/"
    result = run(promtool(), "test", "rules", *RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboards_are_in_sync_with_the_generator() -> None:
    result = run(sys.executable, GENERATOR, "--check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_missing_promtool_skips_locally_and_fails_under_ci(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        promtool()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        promtool()


def test_generator_check_detects_a_hand_edit(tmp_path: Path) -> None:
    assert run(sys.executable, GENERATOR, "--output-dir", tmp_path).returncode == 0
    assert run(sys.executable, GENERATOR, "--check", "--output-dir", tmp_path).returncode == 0
    edited = tmp_path / "cachegate-overview.json"
    edited.write_text(edited.read_text(encoding="utf-8").replace("Hit rate", "Hit ratio"))
    result = run(sys.executable, GENERATOR, "--check", "--output-dir", tmp_path)
    assert result.returncode == 1
    assert "cachegate-overview.json" in result.stderr


def test_panel_queries_are_valid_promql(tmp_path: Path) -> None:
    queries = load_generator().panel_queries()
    assert queries
    assert not [q for q in queries if "$" in q], "a Grafana variable was left in a query"
    rule_file = tmp_path / "panels.rules.yml"
    rule_file.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "dashboard-panels",
                        "rules": [
                            {"record": f"dashboard:panel_{i}", "expr": q}
                            for i, q in enumerate(queries)
                        ],
                    }
                ]
            }
        )
    )
    result = run(promtool(), "check", "rules", rule_file)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboards_reference_only_known_metrics() -> None:
    known = sample_names() | recorded_names()
    unknown = {
        (name, dashboard, expr)
        for dashboard, expr in dashboard_queries()
        for name in metric_names(expr)
        if name not in known
    }
    assert not unknown


def test_rules_reference_only_known_metrics() -> None:
    known = sample_names() | recorded_names()
    unknown = {
        (name, rule.get("record") or rule["alert"])
        for rule in rules()
        for name in metric_names(rule["expr"])
        if name not in known
    }
    assert not unknown


def test_recording_rules_used_in_dashboards_exist() -> None:
    used = {name for _, expr in dashboard_queries() for name in metric_names(expr) if ":" in name}
    assert used
    assert used <= recorded_names()


def test_dashboards_import_without_inputs() -> None:
    for path in dashboard_files():
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        assert "__inputs" not in dashboard, path.name
        assert dashboard["schemaVersion"] >= 39, path.name
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource", path.name
        assert variables["datasource"]["query"] == "prometheus", path.name
        assert "job" in variables, path.name
        panels = dashboard["panels"]
        assert len({p["id"] for p in panels}) == len(panels), f"{path.name}: duplicate panel ids"
        for panel in panels:
            if panel["type"] == "row":
                continue
            where = f"{path.name}: {panel['title']}"
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
            assert panel["description"].strip(), where
            assert panel["targets"], where
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", where
                assert 'job=~"$job"' in target["expr"], where


def test_required_panels_exist() -> None:
    titles = {
        panel["title"]
        for path in dashboard_files()
        for panel in json.loads(path.read_text(encoding="utf-8"))["panels"]
    }
    for required in (
        "Hit rate by layer",
        "Would-be hit rate during dark launch",
        "Shadow and verify agreement",
        "Latency p50 / p95 / p99 by path",
        "Money avoided per hour",
        "Calls and tokens avoided",
        "Store errors, timeouts and rejections",
        "Circuit breaker",
        "Invalidations by reason",
        "Rollout share by layer and mode",
        "Bypasses by reason",
    ):
        assert required in titles


def test_every_alert_has_severity_annotations_and_a_runbook_section() -> None:
    anchors = {
        github_anchor(line.lstrip("#"))
        for line in RUNBOOKS.read_text(encoding="utf-8").splitlines()
        if line.startswith("#")
    }
    assert alerts()
    for alert in alerts():
        name = alert["alert"]
        assert alert["labels"]["severity"] in {"info", "warning", "critical"}, name
        annotations = alert["annotations"]
        for key in ("summary", "description", "runbook_url"):
            assert str(annotations.get(key, "")).strip(), f"{name}: no {key}"
        url = annotations["runbook_url"]
        assert url.startswith(RUNBOOK_URL), name
        assert url.removeprefix(RUNBOOK_URL) in anchors, f"{name}: no runbook section for {url}"


def test_every_alert_has_a_firing_and_a_non_firing_unit_test() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {alert["alert"] for alert in alerts()}
    assert names - firing == set(), "alerts never seen firing"
    assert names - quiet == set(), "alerts never seen staying quiet"


def test_every_recording_rule_has_its_value_checked() -> None:
    tested = {
        name
        for path in RULE_TESTS
        for case in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]
        for check in case.get("promql_expr_test", [])
        for name in metric_names(check["expr"])
    }
    assert recorded_names() - tested == set()


def test_metrics_reference_lists_every_metric_with_type_and_labels() -> None:
    row = re.compile(r"^\|\s*`(?P<name>[a-z_:]+)`\s*\|\s*(?P<type>\w+)\s*\|(?P<labels>[^|]*)\|")
    documented: dict[str, tuple[str, tuple[str, ...]]] = {}
    for line in OBSERVABILITY.read_text(encoding="utf-8").splitlines():
        match = row.match(line)
        if match:
            labels = tuple(sorted(re.findall(r"`(\w+)`", match.group("labels"))))
            documented[match.group("name")] = (match.group("type"), labels)
    assert documented == exposed_metrics()


@pytest.mark.parametrize(
    "values",
    [
        metrics.LAYERS,
        metrics.PATHS,
        metrics.MODES,
        metrics.OUTCOMES,
        metrics.COMPARISON_KINDS,
        metrics.STORE_OPERATIONS,
        metrics.STORE_FAILURES,
        metrics.BYPASS_REASONS,
        metrics.SINGLE_FLIGHT_OUTCOMES,
        metrics.UNCACHEABLE_REASONS,
    ],
)
def test_metrics_reference_lists_every_label_value(values: tuple[str, ...]) -> None:
    text = OBSERVABILITY.read_text(encoding="utf-8")
    assert [value for value in values if f"`{value}`" not in text] == []
