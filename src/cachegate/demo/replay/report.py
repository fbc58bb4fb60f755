"""The replay's report: tables per stage as text, Markdown or JSON."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import TextIO

from cachegate.demo.replay.config import PATHS, ReplayConfig
from cachegate.demo.replay.figures import Agreement, Percentiles, StageResult


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f} %"


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.1f}" if ms < 10 else f"{ms:.0f}"


def _latency(p: Percentiles | None) -> str:
    return "-" if p is None else f"{_ms(p.p50)} / {_ms(p.p95)} ({p.count})"


def _agreement(a: Agreement) -> str:
    if not a.compared:
        return "-"
    return f"{a.match:.0f}/{a.compared:.0f} ({_percent(a.rate)})"


def _versus(latency: Percentiles | None, base: Percentiles | None, field: str) -> str:
    """The change of one statistic against the `off` stage, in percent."""
    if latency is None or base is None or getattr(base, field) <= 0:
        return "-"
    return f"{(getattr(latency, field) / getattr(base, field) - 1) * 100:+.0f} %"


def _baseline(results: Sequence[StageResult]) -> Percentiles | None:
    for result in results:
        if result.stage == "off":
            return result.latency.get("all")
    return None


def tables(results: Sequence[StageResult]) -> list[tuple[str, list[str], list[list[str]]]]:
    """The report as (title, header, rows) tables: cache and cost, latency, safety."""
    base = _baseline(results)
    cache_rows = []
    latency_rows = []
    safety_rows = []
    for r in results:
        cache_rows.append(
            [
                r.stage,
                str(r.queries),
                str(r.writes),
                _percent(r.l1.hit_rate),
                _percent(r.l1.shadow_hit_rate),
                _percent(r.l2.hit_rate),
                _percent(r.l2.shadow_hit_rate),
                _percent(r.served_from_cache),
                _count(r.model_calls),
                _count(r.embed_calls),
                f"{r.l1.calls_avoided:.0f} / {r.l2.calls_avoided:.0f}",
                f"{r.cost_avoided:.3f}",
                _percent(r.cost_saved),
            ]
        )
        overall = r.latency.get("all")
        latency_rows.append(
            [
                r.stage,
                _latency(overall),
                "-" if overall is None else _ms(overall.mean),
                _versus(overall, base, "p50"),
                _versus(overall, base, "p95"),
                _versus(overall, base, "mean"),
                *(_latency(r.latency.get(path)) for path in PATHS),
            ]
        )
        safety_rows.append(
            [
                r.stage,
                _agreement(r.agreement["l1-shadow"]),
                _agreement(r.agreement["l1-verify"]),
                _agreement(r.agreement["l2-shadow"]),
                _agreement(r.agreement["l1-noise"]),
                f"{r.invalidations:.0f}",
                f"{r.store_failures:.0f}",
                str(r.errors),
            ]
        )
    return [
        (
            "Hit rates, fresh calls and money (server-side, /metrics deltas)",
            [
                "stage",
                "queries",
                "writes",
                "L1 hit",
                "L1 would-hit",
                "L2 hit",
                "L2 would-hit",
                "served from L1",
                "model calls",
                "embed calls",
                "avoided L1/L2",
                "$ avoided",
                "cost saved",
            ],
            cache_rows,
        ),
        (
            "Latency by path, ms p50 / p95 (n), client-side",
            ["stage", "all", "mean", "p50 vs off", "p95 vs off", "mean vs off", *PATHS],
            latency_rows,
        ),
        (
            "Agreement and errors",
            [
                "stage",
                "L1 shadow",
                "L1 verify",
                "L2 shadow",
                "L1 noise",
                "invalidations",
                "store failures",
                "errors",
            ],
            safety_rows,
        ),
    ]


def render_text(results: Sequence[StageResult]) -> str:
    """Aligned plain-text tables for a terminal."""
    out: list[str] = []
    for title, header, rows in tables(results):
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        out.append(title)
        for row in [header, *rows]:
            cells = [
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            ]
            out.append("  ".join(cells).rstrip())
        out.append("")
    return "\n".join(out)


def render_markdown(results: Sequence[StageResult]) -> str:
    """GitHub-flavoured markdown tables."""
    out: list[str] = []
    for title, header, rows in tables(results):
        out.append(f"**{title}**")
        out.append("")
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "|".join(["---", *["---:"] * (len(header) - 1)]) + "|")
        out.extend("| " + " | ".join(row) + " |" for row in rows)
        out.append("")
    return "\n".join(out)


def render_json(results: Sequence[StageResult], config: ReplayConfig) -> str:
    """Every figure as JSON, with the replay's settings (no target data)."""
    settings = {
        "stages": list(config.stages),
        "requests": config.requests,
        "duration": config.duration,
        "concurrency": config.concurrency,
        "seed": config.seed,
        "catalog": asdict(config.catalog),
        "mix": asdict(config.mix),
        "query_cost": config.query_cost,
    }
    document = {"settings": settings, "stages": [r.to_json() for r in results]}
    return json.dumps(document, indent=2, sort_keys=True)


def write_output(text: str, destination: str, stdout: TextIO | None = None) -> None:
    """Write `text` to a file, or to `stdout` (default `sys.stdout`) for `-`."""
    if destination == "-":
        (stdout or sys.stdout).write(text if text.endswith("\n") else text + "\n")
        return
    with open(destination, "w", encoding="utf-8") as handle:
        handle.write(text if text.endswith("\n") else text + "\n")
