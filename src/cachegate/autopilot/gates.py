"""Gate evaluation: Prometheus figures in, a verdict with its figure, bound and reason out.

A gate passes only on evidence: no data, NaN, or a sample below its minimum is `hold` with that
reason, never `pass`. Rates are judged with Wilson confidence bounds: a gate passes when the
bound on the unfavourable side is inside the limit, fails when even the favourable bound is
outside it, and holds (undecided) in between. Failure limits are counted by the controller.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from string import Template
from typing import Protocol

from cachegate.autopilot.plan import GateKind, GateSpec, OnFail
from cachegate.autopilot.stats import wilson_interval

__all__ = [
    "GateResult",
    "MetricsReader",
    "MetricsUnavailable",
    "Verdict",
    "evaluate",
    "render_query",
]

AGREEMENT_BELOW_BOUND = "agreement below bound"


class Verdict(StrEnum):
    """A gate's verdict for one evaluation."""

    PASS = "pass"
    HOLD = "hold"
    FAIL = "fail"


class MetricsUnavailable(RuntimeError):
    """The metrics source could not answer (unreachable, refused, malformed answer)."""


class MetricsReader(Protocol):
    """Where gates read figures: one scalar per PromQL expression."""

    def query(self, expr: str, *, at: float | None = None) -> float | None:
        """The value of `expr` at time `at` (now if None); None when the answer is empty.

        NaN is returned as NaN. Raises `MetricsUnavailable` when it cannot answer.
        """
        ...


@dataclass(frozen=True, slots=True)
class GateResult:
    """One gate's evaluation: what was measured, against which bound, and why the verdict."""

    gate: str
    kind: str
    verdict: Verdict
    reason: str
    on_fail: OnFail
    figure: float | None = None
    bound: float | None = None
    threshold: float | None = None
    sample: float | None = None


def render_query(query: str, *, window: float, selector: str) -> str:
    """`query` with `$window` as whole seconds and `$selector` (empty selectors leave no comma)."""
    text = Template(query).safe_substitute(window=f"{max(1, int(window))}s", selector=selector)
    return text.replace(",}", "}").replace("{,", "{").replace("{}", "")


def _missing(value: float | None) -> bool:
    return value is None or math.isnan(value) or math.isinf(value)


def _percent(value: float) -> str:
    return f"{value * 100:.2f} %"


class _Held(Exception):
    """A gate holds before its verdict (no usable figure, too small a sample): its result."""

    def __init__(self, result: GateResult) -> None:
        super().__init__(result.reason)
        self.result = result


@dataclass(frozen=True, slots=True)
class _Evaluation:
    """The evaluation of one gate, with the reader, window and selector fixed."""

    spec: GateSpec
    reader: MetricsReader
    window: float
    selector: str
    baseline_at: float | None

    def read(self, query: str, *, at: float | None = None) -> float | None:
        return self.reader.query(
            render_query(query, window=self.window, selector=self.selector), at=at
        )

    def result(self, verdict: Verdict, reason: str, **figures: float | None) -> GateResult:
        return GateResult(
            gate=self.spec.name,
            kind=self.spec.kind.value,
            verdict=verdict,
            reason=reason,
            on_fail=self.spec.on_fail,
            **figures,
        )

    def usable(self, what: str, value: float | None) -> float:
        """`value`, or a hold (raised) when it is missing or NaN."""
        if value is None:
            raise _Held(self.result(Verdict.HOLD, f"no data for {what}"))
        if _missing(value):
            raise _Held(self.result(Verdict.HOLD, f"{what} is {value} (no usable data)"))
        return value

    def enough(self, sample: float, reason: str | None = None) -> None:
        """Nothing, or a hold (raised) for a sample below the gate's minimum."""
        least = max(self.spec.min_sample, 1)
        if sample < least:
            why = reason or f"too small a sample: {sample:.0f} < {least}"
            raise _Held(self.result(Verdict.HOLD, why, sample=sample))

    def agreement(self) -> GateResult:
        spec = self.spec
        assert spec.layer is not None and spec.max_excess is not None
        base = 'cachegate_comparisons_total{cache_layer="%s",kind=~"%s",outcome=~"%s",$selector}'

        def count(kinds: str, outcomes: str) -> str:
            return f"sum(increase({base % (spec.layer, kinds, outcomes)}[$window]))"

        raw_mismatches = self.read(count("shadow|verify", "mismatch"))
        raw_compared = self.read(count("shadow|verify", "match|mismatch"))
        compared = self.usable(f"comparisons ({spec.layer})", raw_compared)
        mismatches = self.usable(f"mismatches ({spec.layer})", raw_mismatches)
        self.enough(compared)
        noise_mismatches = self.read(count("noise", "mismatch"))
        noise_compared = self.read(count("noise", "match|mismatch"))
        noise_low = noise_high = noise = 0.0
        if not _missing(noise_compared) and not _missing(noise_mismatches) and noise_compared:
            assert noise_compared is not None and noise_mismatches is not None
            noise_low, noise_high = wilson_interval(
                noise_mismatches, noise_compared, spec.confidence
            )
            noise = min(max(noise_mismatches / noise_compared, 0.0), 1.0)
        low, high = wilson_interval(mismatches, compared, spec.confidence)
        rate = min(max(mismatches / compared, 0.0), 1.0)
        excess_high = max(high - noise_low, 0.0)
        excess_low = max(low - noise_high, 0.0)
        figures: dict[str, float | None] = {
            "figure": max(rate - noise, 0.0),
            "bound": excess_high,
            "threshold": spec.max_excess,
            "sample": compared,
        }
        noise_text = f" minus noise {_percent(noise)}" if noise else ""
        if excess_high <= spec.max_excess:
            return self.result(
                Verdict.PASS,
                f"mismatch upper bound {_percent(high)}{noise_text} <= {_percent(spec.max_excess)}",
                **figures,
            )
        if excess_low > spec.max_excess:
            return self.result(
                Verdict.FAIL,
                f"{AGREEMENT_BELOW_BOUND}: mismatch rate at least {_percent(low)}{noise_text}"
                f" > {_percent(spec.max_excess)} ({mismatches:.0f} of {compared:.0f})",
                **figures,
            )
        return self.result(
            Verdict.HOLD,
            f"agreement not established yet: upper bound {_percent(high)}{noise_text}"
            f" > {_percent(spec.max_excess)}",
            **figures,
        )

    def proportion(self) -> GateResult:
        spec = self.spec
        assert spec.events is not None and spec.total is not None
        raw_events, raw_total = self.read(spec.events), self.read(spec.total)
        total = self.usable("total", raw_total)
        events = self.usable("events", raw_events)
        self.enough(total)
        low, high = wilson_interval(events, total, spec.confidence)
        rate = min(max(events / total, 0.0), 1.0)
        if spec.max is not None:
            figures = {"figure": rate, "bound": high, "threshold": spec.max, "sample": total}
            limit = _percent(spec.max)
            if high <= spec.max:
                return self.result(
                    Verdict.PASS, f"upper bound {_percent(high)} <= max {limit}", **figures
                )
            if low > spec.max:
                return self.result(
                    Verdict.FAIL, f"at least {_percent(low)} > max {limit}", **figures
                )
            return self.result(
                Verdict.HOLD, f"undecided: upper bound {_percent(high)} > max {limit}", **figures
            )
        assert spec.min is not None
        figures = {"figure": rate, "bound": low, "threshold": spec.min, "sample": total}
        limit = _percent(spec.min)
        if low >= spec.min:
            return self.result(
                Verdict.PASS, f"lower bound {_percent(low)} >= min {limit}", **figures
            )
        if high < spec.min:
            return self.result(Verdict.FAIL, f"at most {_percent(high)} < min {limit}", **figures)
        return self.result(
            Verdict.HOLD, f"undecided: lower bound {_percent(low)} < min {limit}", **figures
        )

    def threshold(self) -> GateResult:
        spec = self.spec
        assert spec.value is not None
        value = self.usable("the value", self.read(spec.value))
        if spec.max is not None:
            figures = {"figure": value, "bound": value, "threshold": spec.max}
            if value <= spec.max:
                return self.result(Verdict.PASS, f"{value:.4g} <= max {spec.max:g}", **figures)
            return self.result(Verdict.FAIL, f"{value:.4g} > max {spec.max:g}", **figures)
        assert spec.min is not None
        figures = {"figure": value, "bound": value, "threshold": spec.min}
        if value >= spec.min:
            return self.result(Verdict.PASS, f"{value:.4g} >= min {spec.min:g}", **figures)
        return self.result(Verdict.FAIL, f"{value:.4g} < min {spec.min:g}", **figures)

    def comparison(self) -> GateResult:
        spec = self.spec
        assert spec.value is not None and spec.count is not None
        assert spec.max_increase is not None
        count = self.usable("the request count", self.read(spec.count))
        self.enough(count)
        value = self.usable("the value", self.read(spec.value))
        if self.baseline_at is None:
            return self.result(Verdict.HOLD, "no stage before to compare with", figure=value)
        baseline = self.read(spec.value, at=self.baseline_at)
        if _missing(baseline):
            return self.result(
                Verdict.HOLD,
                f"no baseline from the stage before ({baseline})",
                figure=value,
                sample=count,
            )
        assert baseline is not None
        limit = baseline * (1.0 + spec.max_increase) + spec.slack
        figures = {"figure": value, "bound": value, "threshold": limit, "sample": count}
        if value <= limit:
            return self.result(
                Verdict.PASS, f"{value:.4g} <= {limit:.4g} (stage before {baseline:.4g})", **figures
            )
        return self.result(
            Verdict.FAIL, f"{value:.4g} > {limit:.4g} (stage before {baseline:.4g})", **figures
        )

    def sample(self) -> GateResult:
        assert self.spec.count is not None
        count = self.usable("the request count", self.read(self.spec.count))
        self.enough(count, f"too little traffic: {count:.0f} < {self.spec.min_sample}")
        return self.result(
            Verdict.PASS, f"{count:.0f} requests >= {self.spec.min_sample}", sample=count
        )


def evaluate(
    spec: GateSpec,
    reader: MetricsReader,
    *,
    window: float,
    selector: str = "",
    baseline_at: float | None = None,
) -> GateResult:
    """Evaluate `spec` over the last `window` seconds.

    `baseline_at` (unix time the stage began) is where comparison gates read the stage before.
    Raises `MetricsUnavailable` when the reader cannot answer; the controller turns it into a hold.
    """
    evaluation = _Evaluation(spec, reader, window, selector, baseline_at)
    try:
        return _KINDS[spec.kind](evaluation)
    except _Held as held:
        return held.result


_KINDS: dict[GateKind, Callable[[_Evaluation], GateResult]] = {
    GateKind.AGREEMENT: _Evaluation.agreement,
    GateKind.PROPORTION: _Evaluation.proportion,
    GateKind.THRESHOLD: _Evaluation.threshold,
    GateKind.COMPARISON: _Evaluation.comparison,
    GateKind.SAMPLE: _Evaluation.sample,
}
