"""Streamed answers: time to first byte and total time of a hit against a fresh stream, and the
memory of live tees.

In process, raw ASGI (no HTTP client): an SSE endpoint that streams an OpenAI-style answer of
`CHUNKS` events (~120 bytes each) as a model does, the first after `FIRST_TOKEN` seconds and
then one every `PER_TOKEN`. Variants, interleaved: a fresh stream (a new question each time, so
a miss that records and stores), a hit replayed in `burst` and in `paced` (the recorded gaps),
on `MemoryStore` and on `RedisStore`. Measured per request: the time to the first body byte and
to the last message.

Memory: 100 live streams at once (distinct questions), each with 5 followers, every leader
held mid-stream after half its chunks; `tracemalloc` peak over the baseline, per live stream,
against the bytes of the stream relayed so far.
"""

from __future__ import annotations

import asyncio
import json
import time
import tracemalloc
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from benchmarks import apps
from benchmarks.harness import Samples

if TYPE_CHECKING:
    from cachegate import CacheGate
    from cachegate.store import Store

Message = MutableMapping[str, Any]
CHUNKS = 40
FIRST_TOKEN = 0.05
PER_TOKEN = 0.002
TEES = 100
FOLLOWERS = 5


@dataclass
class StreamingResult:
    first_byte: dict[str, Samples] = field(default_factory=dict)
    total: dict[str, Samples] = field(default_factory=dict)
    tee_peak_bytes: int = 0
    tee_streams: int = TEES
    tee_followers: int = FOLLOWERS
    stream_bytes_held: int = 0
    tee_held_bytes: int = 0
    computations: int = 0


def _event(index: int, question: str) -> bytes:
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": f"token{index} "}, "finish_reason": None}],
        "question": question[:16],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


class ModelStream:
    """A raw ASGI SSE endpoint streaming like a model; `hold` stops every call mid-stream."""

    def __init__(self, *, hold: asyncio.Event | None = None, delays: bool = True) -> None:
        self.hold = hold
        self.delays = delays
        self.calls = 0
        self.halfway = 0
        self.all_halfway = asyncio.Event()
        self.expected = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        question = json.loads(body)["q"]
        headers = [(b"content-type", b"text/event-stream; charset=utf-8")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for index in range(CHUNKS):
            if self.delays:
                await asyncio.sleep(FIRST_TOKEN if index == 0 else PER_TOKEN)
            if self.hold is not None and index == CHUNKS // 2:
                self.halfway += 1
                if self.halfway == self.expected:
                    self.all_halfway.set()
                await self.hold.wait()
            chunk = _event(index, question)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


def _gate(store: Store, namespace: str, paced: bool) -> CacheGate:

    from cachegate import CacheGate, Limits
    from cachegate.policy import Pacing, Policy, Streams, trusted_header

    streams = Streams(pacing=Pacing.PACED if paced else Pacing.BURST, cap=1.0)
    policy = Policy(
        "/v1/chat/completions",
        tenant=trusted_header("x-tenant"),
        key={"q": lambda request: request.json().get("q")},
        streams=streams,
    )
    return CacheGate(
        policies=[policy],
        store=store,
        namespace=namespace,
        limits=Limits(max_entry_bytes=1 << 20),
    )


async def _request(app: Callable[..., Awaitable[None]], question: str) -> tuple[int, int, str]:
    """One request: nanoseconds to the first body byte and to the end, and X-CacheGate."""
    clock = time.perf_counter_ns
    body = json.dumps({"q": question}).encode()
    sent = [{"type": "http.request", "body": body, "more_body": False}]
    done = asyncio.Event()
    first = end = 0
    header = ""
    start = clock()

    async def receive() -> Message:
        if sent:
            return sent.pop(0)
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal first, end, header
        if message["type"] == "http.response.start":
            header = dict(message["headers"]).get(b"x-cachegate", b"").decode()
        elif message["type"] == "http.response.body":
            now = clock()
            if not first:
                first = now
            if not message.get("more_body", False):
                end = now
                done.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"x-tenant", b"t1"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("bench", 80),
    }
    await app(scope, receive, send)
    return first - start, end - start, header


async def _timings(redis_url: str, namespace: str, quick: bool) -> StreamingResult:
    from cachegate.middleware import CacheGateMiddleware
    from cachegate.store import MemoryStore

    result = StreamingResult()
    model = ModelStream()
    variants: dict[str, tuple[Any, str]] = {}
    for store_name, make in (
        ("MemoryStore", MemoryStore),
        ("RedisStore", lambda: apps.redis_store(redis_url)),
    ):
        for paced in (False, True):
            gate = _gate(make(), f"{namespace}st{store_name}{paced}", paced)
            app = CacheGateMiddleware(model, gate)
            name = f"hit {'paced' if paced else 'burst'}, {store_name}"
            variants[name] = (app, "the same question")
            first, total, header = await _request(app, "the same question")
            assert header == "miss", header
    fresh_gate = _gate(MemoryStore(), f"{namespace}stfresh", False)
    fresh = CacheGateMiddleware(model, fresh_gate)
    names = ["fresh stream (miss, recorded and stored)", *variants]
    for name in names:
        result.first_byte[name] = Samples(name)
        result.total[name] = Samples(name)
    iterations = 10 if quick else 40
    for number in range(iterations):
        for name in names:
            if name in variants:
                app, question = variants[name]
                expected = "hit"
            else:
                app, question, expected = fresh, f"question {number}", "miss"
            first, total, header = await _request(app, question)
            assert header == expected, (name, header)
            result.first_byte[name].values.append(first)
            result.total[name].values.append(total)
    return result


async def _tee_memory(result: StreamingResult) -> None:
    from cachegate.middleware import CacheGateMiddleware
    from cachegate.store import MemoryStore

    hold = asyncio.Event()
    model = ModelStream(delays=False)
    gate = _gate(MemoryStore(), "teebench", False)
    app = CacheGateMiddleware(model, gate)
    await _request(app, "warm-up")  # imports and first-use allocations out of the measure
    model.hold = hold
    model.calls = 0
    model.expected = TEES
    tracemalloc.start()
    baseline = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    tasks = []
    for stream in range(TEES):
        question = f"live question {stream}"
        tasks.append(asyncio.create_task(_request(app, question)))
        for _ in range(FOLLOWERS):
            tasks.append(asyncio.create_task(_request(app, question)))
    await model.all_halfway.wait()
    await asyncio.sleep(0.01)  # every follower has caught up with its leader
    held = tracemalloc.get_traced_memory()[1] - baseline
    result.tee_held_bytes = gate.live_streams.held_bytes()
    assert len(gate.live_streams) == TEES
    hold.set()
    await asyncio.gather(*tasks)
    tracemalloc.stop()
    result.tee_peak_bytes = held
    result.stream_bytes_held = sum(len(_event(i, "live question 00")) for i in range(CHUNKS // 2))
    result.computations = model.calls


def run(redis_url: str, namespace: str, *, quick: bool) -> StreamingResult:
    async def both() -> StreamingResult:
        result = await _timings(redis_url, namespace, quick)
        await _tee_memory(result)
        return result

    return asyncio.run(both())


def render(result: StreamingResult) -> list[str]:
    """The group's section of the report."""

    def ms(ns: float) -> str:
        return f"{ns / 1e6:.3f} ms"

    fresh = "fresh stream (miss, recorded and stored)"
    lines = [
        "## Streamed answers",
        "",
        f"An SSE answer of {CHUNKS + 1} events, the first after {FIRST_TOKEN * 1000:.0f} ms, "
        f"then one every {PER_TOKEN * 1000:.0f} ms (raw ASGI, in process).",
        "",
        "| variant | first byte p50 | first byte p95 | total p50 | total p95 "
        "| first byte vs fresh |",
        "|---|---|---|---|---|---|",
    ]
    base = result.first_byte[fresh].median
    for name, samples in result.first_byte.items():
        total = result.total[name]
        ratio = samples.median / base if base else 0.0
        lines.append(
            f"| {name} | {ms(samples.median)} | {ms(samples.p95)} | {ms(total.median)} | "
            f"{ms(total.p95)} | {ratio:.4f}x |"
        )
    per = result.tee_peak_bytes / result.tee_streams
    lines += [
        "",
        f"Live tees: {result.tee_streams} streams at once, {result.tee_followers} followers each, "
        f"held half-way: peak traced memory {result.tee_peak_bytes / 1024:.0f} KiB over the "
        f"baseline, {per / 1024:.1f} KiB per live stream (with its {result.tee_followers + 1} "
        f"requests) for {result.stream_bytes_held / 1024:.1f} KiB of stream relayed so far, of "
        f"which the tees' own chunk buffers {result.tee_held_bytes / 1024:.0f} KiB in all "
        f"(each bounded by max_entry_bytes); "
        f"{result.computations} computations for {result.tee_streams * (result.tee_followers + 1)}"
        " requests.",
        "",
    ]
    return lines
