"""OpenTelemetry spans around each step. Attributes say layer, mode, outcome and route: never
query text, answers or tenant data. Without an SDK configured the spans cost next to nothing."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.trace import Span, StatusCode
from opentelemetry.util.types import Attributes

tracer = trace.get_tracer("cachegate")

_provider_set = False


def configured() -> bool:
    """Whether a tracer provider (an SDK) is set. Without one every span is a no-op that still
    costs about a microsecond to make, so the hit path makes none. A process sets its provider
    once: it is looked up until it is, then remembered.

    Until then the API's own global is read first: `get_tracer_provider()` looks the
    environment up on every call, which costs more than the span it would save. A provider
    named in `OTEL_PYTHON_TRACER_PROVIDER` is loaded into that global when `tracer` is made,
    at import; an API without the global takes the public lookup.
    """
    global _provider_set
    if not _provider_set:
        if getattr(trace, "_TRACER_PROVIDER", 0) is None:
            return False
        _provider_set = not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    return _provider_set


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
