"""End to end against a real Prometheus: the demo service (CacheGate over the shared Redis) is
served by uvicorn and scraped every second by the Debian package's `prometheus`, which also
evaluates the repo's recording rules and alerts. A generated load runs through a dark launch
(both layers shadow) and then a serve stage with verification; then, through the Prometheus HTTP
API, every dashboard panel query must evaluate and return data, and every rule must be healthy.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import httpx
import pytest
import yaml
from conftest import delete_namespace, missing
from prometheus_client import CollectorRegistry
from support.prometheus import (
    Prometheus,
    PromQLError,
    prometheus_binary,
    running_prometheus,
    serving,
)

from cachegate.demo.app import TENANT_HEADER, create_app, policies, write_rules
from cachegate.gate import CacheGate
from cachegate.metrics import Metrics
from cachegate.rollout import OFF, Decision, Mode
from cachegate.store import RedisStore

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "alerts" / "cachegate.rules.yml"
JOB = "cachegate"
"""The scrape job; the dashboards select `job=~".+"` and every rule aggregates `by (job, ...)`."""

DARK_LAUNCH = Decision(l1=Mode.SHADOW, l2=Mode.SHADOW)
SERVE = Decision(l1=Mode.SERVE, l2=Mode.SERVE, verify=True)
STAGE_SECONDS = 3.0
"""How long each stage's load runs: three scrapes or more, so every counter has two samples."""
DATA_TIMEOUT = 20.0
"""How long to wait, after the load, for every panel to have data."""

_AUTOPILOT = "exported by `cachegate rollout run --metrics-port`, not by the service"
NO_DATA: dict[str, str] = {
    'cachegate:flag_state_age_seconds{job=~".+"}': "this app's rollout is no flag source, so the "
    "state was never fetched (timestamp 0, no age); tests/test_flag_state.py scrapes a demo "
    "connected to a real Unleash for it",
    'max by (job) (cachegate_autopilot_stage{job=~".+"})': _AUTOPILOT,
    "sum by (action, reason) "
    '(increase(cachegate_autopilot_decisions_total{job=~".+"}[1h])) > 0': _AUTOPILOT,
    'max by (gate) (cachegate_autopilot_gate_verdict{job=~".+"})': _AUTOPILOT,
    'max by (job) (cachegate_autopilot_track_state{job=~".+",track="l2"})': _AUTOPILOT,
    'max by (job) (cachegate_autopilot_track_state{job=~".+",track="l1"})': _AUTOPILOT,
    "sum by (track, action, reason) "
    '(increase(cachegate_autopilot_track_decisions_total{job=~".+"}[1h])) > 0': _AUTOPILOT,
}
"""Panel queries that cannot return data in a short, healthy run, with the reason. The demo
embeds questions through the L2 cache, and the series a healthy run never moves (store failures,
corrupt entries, the breaker gauge) are initialised to 0, which is data."""

SHADOW_HIT_RATIO = (
    'sum by (cache_layer) (cachegate:shadow_lookups:rate5m{job=~".+", result="hit"})'
    ' / (sum by (cache_layer) (cachegate:shadow_lookups:rate5m{job=~".+"}) > 0)'
)
HIT_RATIO = (
    'sum by (cache_layer) (cachegate:hits:rate5m{job=~".+"})'
    ' / (sum by (cache_layer) (cachegate:lookups:rate5m{job=~".+"}) > 0)'
)
COMPARISONS = 'sum by (kind, outcome) (cachegate:comparisons:rate5m{job=~".+"})'
MOVED: tuple[tuple[str, str], ...] = (
    # dark launch: would-be hits on both layers, compared with the fresh answers
    (SHADOW_HIT_RATIO, "cache_layer=query_result"),
    (SHADOW_HIT_RATIO, "cache_layer=embedding"),
    (COMPARISONS, "kind=shadow,outcome=match"),
    # serve: hits served on both layers, verified in the background
    (HIT_RATIO, "cache_layer=query_result"),
    (HIT_RATIO, "cache_layer=embedding"),
    (COMPARISONS, "kind=verify,outcome=match"),
    (
        'sum by (cache_layer, mode) (cachegate:decisions:rate5m{job=~".+"})',
        "cache_layer=query_result,mode=serve",
    ),
    (
        'sum by (cache_layer) (increase(cachegate_fresh_calls_avoided_total{job=~".+"}[1h]))',
        "cache_layer=query_result",
    ),
    # streamed answers replayed from the store
    ('sum by (source) (rate(cachegate_stream_hits_total{job=~".+"}[5m]))', "source=store"),
    # requests without a workspace, and session writes that invalidate
    ('sum by (reason) (rate(cachegate_bypasses_total{job=~".+"}[5m]))', "reason=no_tenant"),
    (
        'sum by (reason) (rate(cachegate_cache_invalidations_total{job=~".+"}[5m]))',
        "reason=session_created",
    ),
)
"""Panel queries whose value must be positive after the load: `labels` of the sample to check."""


def load_generator() -> ModuleType:
    """Import dashboards/generate.py (a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location(
        "cachegate_dashboards_e2e", ROOT / "dashboards" / "generate.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class StageRollout:
    """The rollout stage the test switches: every request with a tenant gets `decision`."""

    decision: Decision = OFF

    def decide(self, tenant: str | None) -> Decision:
        return OFF if tenant is None else self.decision


WORKSPACES = ("ws-alpha", "ws-beta", "ws-gamma")
CLIENTS = ("c1", "c2", "c3")
QUESTIONS = (
    "How did the client sleep this week?",
    "What coping strategies were discussed?",
    "Any changes in medication?",
    "What goals were set for next session?",
)


async def run_stage(client: httpx.AsyncClient, seconds: float, round_robin: Iterator[int]) -> int:
    """Repeat queries across workspaces and clients for `seconds`, with a few session writes
    (which invalidate) and some requests without a workspace (bypassed); the requests sent."""
    sent = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        batch = []
        for _ in range(8):
            n = next(round_robin)
            workspace, client_id = WORKSPACES[n % 3], CLIENTS[(n // 3) % 3]
            headers = {TENANT_HEADER: workspace}
            question = QUESTIONS[(n // 9) % len(QUESTIONS)]
            if n % 5 == 0:  # same question, other spelling: a LOOSE-normalized repeat
                question = "  " + question.upper()
            body = {"query": question, "client_id": client_id}
            if n % 23 == 0:
                batch.append(client.post("/ai/query", json=body))  # no workspace: bypass
            elif n % 7 == 0:  # the same question streamed (SSE) from the OpenAI-style route
                chat = {
                    "model": "demo",
                    "messages": [{"role": "user", "content": question}],
                    "stream": True,
                    "user": client_id,
                }
                batch.append(client.post("/v1/chat/completions", headers=headers, json=chat))
            elif n % 29 == 0:
                batch.append(
                    client.post(
                        "/sessions",
                        headers=headers,
                        json={"client_id": client_id, "notes": f"Session {n}: slept better."},
                    )
                )
            else:
                batch.append(client.post("/ai/query", headers=headers, json=body))
        responses = await asyncio.gather(*batch)
        for response in responses:
            assert response.status_code < 500, response.text
        sent += len(responses)
    return sent


async def generate_load(base_url: str, rollout: StageRollout) -> dict[str, int]:
    """Seed notes, then run the dark-launch stage and the serve stage; requests per stage."""
    counter = itertools.count()
    sent: dict[str, int] = {}
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0) as client:
        for workspace, client_id in itertools.product(WORKSPACES, CLIENTS):
            response = await client.post(
                "/sessions",
                headers={TENANT_HEADER: workspace},
                json={
                    "client_id": client_id,
                    "notes": f"{client_id} slept poorly. Tried breathing.",
                },
            )
            assert response.status_code == 201, response.text
        rollout.decision = DARK_LAUNCH
        sent["dark launch"] = await run_stage(client, STAGE_SECONDS, counter)
        rollout.decision = SERVE
        sent["serve"] = await run_stage(client, STAGE_SECONDS, counter)
    return sent


def rule_names() -> list[tuple[str, str]]:
    """(group, name) of every recording rule and alert in the repo's rule file."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return sorted(
        (group["name"], rule.get("record") or rule["alert"])
        for group in groups
        for rule in group["rules"]
    )


def missing_data(prometheus: Prometheus, queries: list[str]) -> dict[str, str]:
    """The queries that give no samples (or an error) right now, with what they gave."""
    empty: dict[str, str] = {}
    for query in queries:
        try:
            if not prometheus.query(query):
                empty[query] = "no data"
        except (PromQLError, httpx.HTTPError) as error:  # reported by the assertion
            empty[query] = f"error: {error}"
    return empty


@pytest.fixture
def prometheus_bin() -> str:
    binary = prometheus_binary()
    if binary is None:
        missing("prometheus (Debian package `prometheus`)")
    assert binary is not None
    return binary


def test_dashboards_and_rules_against_real_prometheus(
    prometheus_bin: str, redis_url: str, namespace: str
) -> None:
    generator = load_generator()
    queries: list[str] = generator.panel_queries()
    assert queries, "the dashboards have no panel queries"
    assert set(NO_DATA) <= set(queries), "NO_DATA lists queries no panel has"
    assert {expr for expr, _ in MOVED} <= set(queries), "MOVED lists queries no panel has"

    registry = CollectorRegistry()
    store = RedisStore.from_url(redis_url, deadline=1.0, metrics=Metrics(registry=registry))
    rollout = StageRollout()
    gate = CacheGate(
        policies=policies(),
        write_rules=write_rules(),
        store=store,
        rollout=rollout,
        namespace=namespace,
    )
    app = create_app(gate, latency=0.01, registry=registry)
    try:
        with serving(app, cleanup=store.aclose) as base_url:
            target = base_url.removeprefix("http://")
            with running_prometheus(
                prometheus_bin, job=JOB, targets=[target], rule_files=[RULES]
            ) as prometheus:
                # The first scrape must precede the load: a counter first seen already at its
                # final value has no increase, and the ratio panels (`> 0` denominators) stay empty.
                prometheus.wait_scraped(JOB)
                sent = asyncio.run(generate_load(base_url, rollout))
                assert all(count > 0 for count in sent.values()), sent

                # Poll until every panel has data (or the deadline): 1 s scrapes and evaluations.
                deadline = time.monotonic() + DATA_TIMEOUT
                while True:
                    empty = missing_data(prometheus, queries)
                    if set(empty) <= set(NO_DATA) or time.monotonic() > deadline:
                        break
                    time.sleep(0.5)

                errors = {q: why for q, why in empty.items() if why.startswith("error")}
                assert not errors, f"panel queries Prometheus rejects: {errors}"
                without_data = {q: why for q, why in empty.items() if q not in NO_DATA}
                assert not without_data, (
                    f"panel queries without data after {sent} requests: " + "\n".join(without_data)
                )

                # The load, not just initialised series: each stage shows in the panels' values.
                for expr, labels in MOVED:
                    values = prometheus.values(expr)
                    assert values.get(labels, 0.0) > 0, f"{expr}: {labels} not > 0 in {values}"

                targets = prometheus.api("targets")["activeTargets"]
                assert [t["health"] for t in targets] == ["up"], targets

                rules = prometheus.rules()
                loaded = sorted((rule["group"], rule["name"]) for rule in rules)
                assert loaded == rule_names(), "Prometheus did not load every rule of the file"
                unhealthy = {
                    rule["name"]: (rule.get("health"), rule.get("lastError"))
                    for rule in rules
                    if rule.get("health") != "ok" or rule.get("lastError")
                }
                assert not unhealthy, f"rules not healthy: {unhealthy}"
    finally:
        delete_namespace(redis_url, namespace)
