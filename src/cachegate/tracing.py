"""OpenTelemetry spans around each step. Attributes say layer, mode, outcome and route: never
query text, answers or tenant data. Without an SDK configured the spans cost next to nothing."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.trace import Span, StatusCode
from opentelemetry.util.types import Attributes

tracer = trace.get_tracer("cachegate")

LAYER = "cachegate.layer"
MODE = "cachegate.mode"
OUTCOME = "cachegate.outcome"
ROUTE = "http.route"
DECISION = "cachegate.decision"
COMPARISON = "cachegate.comparison"
ERROR_TYPE = "error.type"


@contextmanager
def around_app(name: str, attributes: Attributes) -> Iterator[Span]:
    """A span around the app's own code. An exception the app raises is recorded by its type
    only: its message and stack trace may carry request data (a validation error quoting a
    patient id), and the app's own instrumentation decides what to keep of them."""
    with tracer.start_as_current_span(
        name, attributes=attributes, record_exception=False, set_status_on_exception=False
    ) as span:
        try:
            yield span
        except BaseException as error:
            span.set_attribute(ERROR_TYPE, type(error).__qualname__)
            span.set_status(StatusCode.ERROR)
            raise
