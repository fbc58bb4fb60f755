"""Assembling the demo service from its configuration and the environment.

Embedded defaults: `MemoryStore`, flags from the stage files in `flags/`, the local deterministic
embedder. Real parts when configured: `REDIS_URL` (a `RedisStore`), `UNLEASH_URL` with
`UNLEASH_API_TOKEN` (a connected `FlagRollout`, started in the app's lifespan without blocking
the loop, from the last state Unleash answered (`CACHEGATE_FLAG_STATE_FILE`), else the stage
the operator chose, else `off`), `CO_API_KEY` (Cohere), `CACHEGATE_KEY_SECRET` (keyed digests
in every store key; the same in every process).
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client import REGISTRY, CollectorRegistry
from starlette.applications import Starlette

from cachegate.demo import DEFAULT_EMBED_LATENCY, DEFAULT_LATENCY, DEFAULT_STAGE
from cachegate.demo.app import (
    TENANT_HEADER,
    Notes,
    create_app,
    demo_metrics,
    policies,
    write_rules,
)
from cachegate.demo.embedder import MeteredClient, embed_client
from cachegate.demo.stages import StageControl
from cachegate.demo.workload import Catalog
from cachegate.embeddings import CachedEmbedder
from cachegate.flags import FlagStateFile, Source, UnleashFlags, UnleashSettings, stage_path
from cachegate.gate import CacheGate
from cachegate.keys import Normalization
from cachegate.limits import Limits
from cachegate.metrics import Metrics, default_metrics
from cachegate.policy import Extractor, RequestView, header
from cachegate.store.base import Store
from cachegate.store.memory import MemoryStore
from cachegate.store.redis import RedisStore


@dataclass(frozen=True)
class DemoConfig:
    """What `cachegate serve` can set on the command line."""

    stage: str | None = None
    """The stage chosen; None: `DEFAULT_STAGE` offline, `off` as a connected bootstrap."""
    latency: float = DEFAULT_LATENCY
    embed_latency: float = DEFAULT_EMBED_LATENCY
    catalog: Catalog = field(default_factory=Catalog)
    namespace: str = "cachegate"
    noise_sample_rate: float = 0.01
    """Share of shadow requests computed twice to measure the noise baseline."""
    stale_writes: float = 0.0
    """Share of session writes whose invalidation is skipped: injected staleness, to show the
    rollout autopilot catching it. 0 (the default) in any real use."""
    seed: int | None = None
    """Seed of the stale-write draw (None: unseeded)."""

    def __post_init__(self) -> None:
        if self.latency < 0 or self.embed_latency < 0:
            raise ValueError("latencies must not be negative")
        if not 0.0 <= self.stale_writes <= 1.0:
            raise ValueError("stale_writes must be between 0 and 1")


@dataclass
class Demo:
    """The assembled service and what it is made of (for the startup line and tests)."""

    app: Starlette
    gate: CacheGate
    stages: StageControl
    embedder: CachedEmbedder
    parts: dict[str, str]


def build_demo(
    config: DemoConfig,
    *,
    environ: Mapping[str, str] | None = None,
    registry: CollectorRegistry = REGISTRY,
) -> Demo:
    """The demo for `config`, with the real parts the environment configures.

    Raises `UnknownStageError` for an unknown stage and `ValueError` for an incomplete Unleash
    configuration. Nothing connects until the app starts.
    """
    env = os.environ if environ is None else environ
    metrics = default_metrics() if registry is REGISTRY else Metrics(registry=registry)
    stages = _stages(config.stage, env, metrics)
    store: Store
    redis_url = env.get("REDIS_URL")
    store = RedisStore.from_url(redis_url, metrics=metrics) if redis_url else MemoryStore()
    secret = env.get("CACHEGATE_KEY_SECRET")
    gate = CacheGate(
        policies=policies(),
        write_rules=write_rules(tenant=_forgetful(config.stale_writes, config.seed)),
        store=store,
        rollout=stages.rollout,
        namespace=config.namespace,
        key_secret=secret.encode() if secret else None,
        metrics=metrics,
        limits=Limits(noise_sample_rate=config.noise_sample_rate),
    )
    client, model, provider = embed_client(env, latency=config.embed_latency)
    metered = MeteredClient(client, demo_metrics(registry).embed_calls)
    embedder = CachedEmbedder(
        metered,
        store,
        namespace=config.namespace,
        key_secret=gate.keyspace.secret,
        rollout=gate.rollout,
        metrics=metrics,
        normalization=Normalization.EXACT,
    )
    app = create_app(
        gate,
        latency=config.latency,
        registry=registry,
        notes=Notes.seeded(config.catalog),
        embedder=embedder,
        documents=metered,
        model=model,
        stages=stages,
    )
    catalog = config.catalog
    parts = {
        "store": "Redis (REDIS_URL)" if redis_url else "in-memory",
        "flags": (
            f"Unleash (UNLEASH_URL), {_start_state(stages)}"
            if stages.connected
            else f"stage {stages.bootstrap} from flags/"
        ),
        "embeddings": f"{provider}, model {model}",
        "data": (
            f"{catalog.workspaces} workspaces x {catalog.clients} clients, "
            f"{catalog.notes_per_client} synthetic notes each"
        ),
    }
    return Demo(app=app, gate=gate, stages=stages, embedder=embedder, parts=parts)


def _forgetful(share: float, seed: int | None) -> Extractor | None:
    """The write rules' tenant, lost for `share` of the writes (no tenant: no invalidation, and
    the cached answers of that client go stale); None (the normal extractor) when `share` is 0."""
    if share <= 0.0:
        return None
    tenant = header(TENANT_HEADER)
    draw = random.Random(seed).random

    def extract(request: RequestView) -> object:
        return None if draw() < share else tenant(request)

    return extract


def _stages(stage: str | None, env: Mapping[str, str], metrics: Metrics) -> StageControl:
    if not env.get("UNLEASH_URL"):
        return StageControl.offline(stage or DEFAULT_STAGE, metrics=metrics)
    settings = UnleashSettings.from_env(env)
    source = UnleashFlags.connect(
        settings,
        bootstrap=stage_path(stage or "off"),
        state_file=FlagStateFile.default(
            settings.url, settings.app_name, settings.environment, env
        ),
        metrics=metrics,
    )
    return StageControl(source, stage or "off")


def _start_state(stages: StageControl) -> str:
    tracker = stages.source.tracker
    if tracker.source is Source.PERSISTED:
        return f"persisted flag state ({tracker.age_text()} old) until it answers"
    return f"bootstrap stage {stages.bootstrap} until it answers"
