"""Streamed answers end to end: the demo's OpenAI-compatible `POST /v1/chat/completions` under a
real uvicorn server on a free port, read by the official `openai` SDK and by httpx as SSE."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from prometheus_client import CollectorRegistry

from cachegate import CacheGate, Metrics
from cachegate.demo.app import create_app, policies, write_rules
from cachegate.store import MemoryStore

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

WORKSPACE = {"X-Workspace-ID": "ws-1"}
ROUTE = "/v1/chat/completions"


def chat(question: str, *, stream: bool = True) -> dict[str, Any]:
    return {
        "model": "demo-model",
        "messages": [{"role": "user", "content": question}],
        "stream": stream,
    }


class Served:
    """The demo behind uvicorn: its base URL and its metrics."""

    def __init__(self, url: str, registry: CollectorRegistry) -> None:
        self.url = url
        self.registry = registry

    def sample(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    @property
    def model_calls(self) -> float:
        return self.sample("cachegate_demo_model_calls_total")

    async def until(self, condition: Callable[[], bool], seconds: float = 10.0) -> None:
        for _ in range(int(seconds / 0.02)):
            if condition():
                return
            await asyncio.sleep(0.02)
        raise AssertionError("the server did not get there in time")


@asynccontextmanager
async def serve(latency: float) -> AsyncIterator[Served]:
    registry = CollectorRegistry()
    gate = CacheGate(
        policies=policies(),
        write_rules=write_rules(),
        store=MemoryStore(),
        metrics=Metrics(registry=registry),
    )
    app = create_app(gate, latency=latency, registry=registry)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(500):
            if server.started or serving.done():
                break
            await asyncio.sleep(0.01)
        assert server.started, "uvicorn did not start"
        yield Served(f"http://127.0.0.1:{port}", registry)
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
        sock.close()


class Read:
    """One streamed response as httpx read it: header, events with their arrival times."""

    def __init__(self) -> None:
        self.cachegate: str | None = None
        self.raw = b""
        self.times: list[float] = []
        self.first = asyncio.Event()

    @property
    def events(self) -> list[bytes]:
        return [event + b"\n\n" for event in self.raw.split(b"\n\n") if event]


async def read_stream(
    client: httpx.AsyncClient,
    question: str,
    *,
    stop_after_first: bool = False,
    into: Read | None = None,
) -> Read:
    read = into if into is not None else Read()
    async with client.stream("POST", ROUTE, json=chat(question), headers=WORKSPACE) as response:
        assert response.status_code == 200
        read.cachegate = response.headers.get("x-cachegate")
        async for piece in response.aiter_raw():
            read.raw += piece
            read.times.append(time.perf_counter())
            read.first.set()
            if stop_after_first:
                return read  # leaving the block closes the connection mid-stream
    return read


def sdk(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=url + "/v1", api_key="unused", default_headers=WORKSPACE, max_retries=0
    )


async def sdk_stream(client: openai.AsyncOpenAI, question: str) -> tuple[str, list[Any]]:
    raw = await client.chat.completions.with_raw_response.create(
        model="demo-model", messages=[{"role": "user", "content": question}], stream=True
    )
    chunks = [chunk.model_dump() async for chunk in raw.parse()]
    return raw.headers.get("x-cachegate", ""), chunks


async def test_openai_sdk_streams_a_miss_then_the_identical_hit() -> None:
    async with serve(latency=0.2) as served:
        client = sdk(served.url)
        try:
            miss, fresh = await sdk_stream(client, "How did the client sleep this week?")
            hit, cached = await sdk_stream(client, "How did the client sleep this week?")
            whole = await client.chat.completions.with_raw_response.create(
                model="demo-model",
                messages=[{"role": "user", "content": "How did the client sleep this week?"}],
            )
        finally:
            await client.close()
        assert (miss, hit) == ("miss", "hit")
        assert cached == fresh
        assert len(fresh) > 3
        assert fresh[-1]["usage"]["completion_tokens"] > 0  # usage details are kept
        text = "".join(c["choices"][0]["delta"]["content"] or "" for c in fresh)
        # the same question, not streamed: its own entry, and the same answer
        assert whole.headers["x-cachegate"] == "miss"
        assert whole.parse().choices[0].message.content == text
        assert served.model_calls == 2


async def test_httpx_reads_the_hit_event_for_event_byte_identical() -> None:
    async with serve(latency=0.3) as served, httpx.AsyncClient(base_url=served.url) as client:
        miss = await read_stream(client, "what about appetite?")
        hit = await read_stream(client, "what about appetite?")
        assert (miss.cachegate, hit.cachegate) == ("miss", "hit")
        assert hit.raw == miss.raw
        assert hit.events == miss.events
        assert miss.events[-1] == b"data: [DONE]\n\n"
        # paced (the demo's policy): the replay keeps the recorded rhythm, loosely asserted
        assert hit.times[-1] - hit.times[0] >= 0.5 * (miss.times[-1] - miss.times[0])


async def test_a_client_that_leaves_mid_stream_leaves_nothing_stored() -> None:
    async with serve(latency=0.5) as served, httpx.AsyncClient(base_url=served.url) as client:
        cut = await read_stream(client, "any nightmares?", stop_after_first=True)
        assert cut.cachegate == "miss"
        reason = {"reason": "stream_disconnected"}
        await served.until(
            lambda: served.sample("cachegate_uncacheable_responses_total", **reason) == 1
        )
        again = await read_stream(client, "any nightmares?")
        assert again.cachegate == "miss"
        assert again.events[-1] == b"data: [DONE]\n\n"


async def test_twenty_identical_streams_make_one_computation() -> None:
    async with serve(latency=1.0) as served, httpx.AsyncClient(base_url=served.url) as client:
        reads = await asyncio.gather(*(read_stream(client, "how is the mood?") for _ in range(20)))
        assert served.model_calls == 1
        assert [r.cachegate for r in reads].count("miss") == 1
        for read in reads:
            assert read.raw == reads[0].raw
            assert read.events[-1] == b"data: [DONE]\n\n"
        shared = served.sample("cachegate_stream_tee_followers_total", outcome="complete")
        stored = served.sample("cachegate_stream_hits_total", source="store")
        assert shared + stored == 19
        assert shared > 0  # most arrive while the answer is still streaming


async def test_killing_the_leader_mid_stream_sends_its_followers_to_fresh() -> None:
    async with serve(latency=1.0) as served, httpx.AsyncClient(base_url=served.url) as client:
        question = "does the client exercise?"
        reads = [Read() for _ in range(5)]
        async with client.stream("POST", ROUTE, json=chat(question), headers=WORKSPACE) as leader:
            await leader.aiter_raw().__anext__()  # the leader's stream is live
            followers = [
                asyncio.create_task(read_stream(client, question, into=read)) for read in reads
            ]
            # every follower has received part of the stream before the leader is killed
            await asyncio.wait_for(asyncio.gather(*(read.first.wait() for read in reads)), 5)
        # leaving the block closed the leader's connection mid-stream
        await asyncio.wait_for(asyncio.gather(*followers), 20)
        complete = await read_stream(client, question)
        assert complete.cachegate == "hit"  # a follower's own answer was stored
        for read in reads:
            assert read.cachegate == "hit"  # the relayed start
            assert read.raw == complete.raw  # the whole stream, nothing twice, nothing lost
        fallbacks = served.sample("cachegate_stream_tee_followers_total", outcome="fallback")
        assert fallbacks == 5
        assert served.model_calls == 1 + 5
