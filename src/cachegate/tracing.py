"""OpenTelemetry spans around each step. Attributes say layer, mode, outcome and route: never
query text, answers or tenant data. Without an SDK configured the spans cost next to nothing."""

from __future__ import annotations

from opentelemetry import trace

tracer = trace.get_tracer("cachegate")

LAYER = "cachegate.layer"
MODE = "cachegate.mode"
OUTCOME = "cachegate.outcome"
ROUTE = "http.route"
DECISION = "cachegate.decision"
