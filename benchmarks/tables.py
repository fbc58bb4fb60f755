"""Markdown for the report: tables, durations and ratios, written one way in every section."""

from __future__ import annotations

import math

from benchmarks.harness import Samples


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table, one line a row."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def us(ns: float) -> str:
    """A duration in nanoseconds, in the unit that reads best."""
    if math.isnan(ns):
        return "n/a"
    if ns >= 10_000_000:
        return f"{ns / 1e6:,.1f} ms"
    if ns >= 1_000_000:
        return f"{ns / 1e6:,.2f} ms"
    if ns < 1_000:
        return f"{ns:,.0f} ns"
    return f"{ns / 1e3:,.1f} µs"


def x(ratio: float) -> str:
    """A ratio as `1.23x` (`n/a` when it could not be measured)."""
    return "n/a" if math.isnan(ratio) else f"{ratio:.2f}x"


def div(a: float, b: float) -> float:
    """`a / b`, or NaN when either side is missing or `b` is zero."""
    return a / b if b and not math.isnan(a) and not math.isnan(b) else float("nan")


def timings(first: str, samples: dict[str, Samples], base: str, base_label: str) -> list[str]:
    """A table of named timings: median, p95 and the ratio to the one named `base`."""
    reference = samples[base].median
    rows = [
        [name, us(s.median), us(s.p95), x(div(s.median, reference))] for name, s in samples.items()
    ]
    return table([first, "median", "p95", f"ratio vs {base_label}"], rows)
