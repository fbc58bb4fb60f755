"""When CacheGate's spans start: a process sets its tracer provider once, at any time, or names
it in `OTEL_PYTHON_TRACER_PROVIDER`. The hit path skips its lookup span until a provider is set,
so each case runs in a fresh interpreter (the provider is process-wide and cannot be unset)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SERVE_TWICE = textwrap.dedent(
    """
    import asyncio

    import httpx
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from cachegate import CacheGate, CacheGateMiddleware, Policy, body_field, trusted_header


    async def ask(request):
        await request.body()
        return JSONResponse({"answer": "a"})


    def provider():
        found = trace.get_tracer_provider()
        if not isinstance(found, TracerProvider):
            found = TracerProvider()
            trace.set_tracer_provider(found)
        exporter = InMemorySpanExporter()
        found.add_span_processor(SimpleSpanProcessor(exporter))
        return exporter


    async def lookups(client, exporter):
        response = await client.post(
            "/ai/query", json={"q": "x"}, headers={"x-workspace-id": "w"}
        )
        assert response.status_code == 200, response.status_code
        if exporter is None:
            return None
        return sum(span.name == "cachegate.lookup" for span in exporter.get_finished_spans())


    async def main():
        gate = CacheGate(
            policies=[Policy("/ai/query", tenant=trusted_header("x-workspace-id"),
                             key={"q": body_field("q")})],
        )
        app = Starlette(routes=[Route("/ai/query", ask, methods=["POST"])])
        app.add_middleware(CacheGateMiddleware, gate=gate)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            exporter = None if SET_LATER else provider()
            await lookups(client, exporter)
            if SET_LATER:
                exporter = provider()
            print(await lookups(client, exporter))
        await gate.aclose()


    asyncio.run(main())
    """
)


def _lookup_spans(*, set_later: bool, environment: dict[str, str]) -> int:
    """The lookup spans recorded over two hits, the exporter attached before the first
    request, or between the two (`set_later`)."""
    env = {k: v for k, v in os.environ.items() if k != "OTEL_PYTHON_TRACER_PROVIDER"}
    env.update(environment)
    result = subprocess.run(
        [sys.executable, "-c", f"SET_LATER = {set_later}\n{SERVE_TWICE}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return int(result.stdout.strip())


def test_a_provider_set_after_requests_were_served_gets_the_next_lookup_span() -> None:
    assert _lookup_spans(set_later=True, environment={}) == 1


def test_a_provider_set_before_the_first_request_gets_every_lookup_span() -> None:
    assert _lookup_spans(set_later=False, environment={}) == 2


def test_a_provider_named_in_the_environment_gets_lookup_spans_without_being_set() -> None:
    """The SDK's provider named by `OTEL_PYTHON_TRACER_PROVIDER`, which the API loads on first
    use: nothing in the process sets one."""
    count = _lookup_spans(
        set_later=False, environment={"OTEL_PYTHON_TRACER_PROVIDER": "sdk_tracer_provider"}
    )
    assert count == 2
