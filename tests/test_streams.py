"""Streamed answers through the middleware, driven as raw ASGI so every body message is seen:
a hit replays the miss chunk for chunk; only a normally completed stream is stored; pacing;
the live tee (one computation shared, a failed leader releases its followers); comparisons on
the events' data; and a streamed hit goes through the same admission as any hit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import MutableMapping, Sequence
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from support.asgi import Exchange, Message, drive

from cachegate import CacheGate, Limits, Metrics
from cachegate.middleware import CacheGateMiddleware
from cachegate.policy import Pacing, Policy, RequestView, Streams, trusted_header
from cachegate.responses import send_stream
from cachegate.rollout import Decision, Mode, StaticRollout
from cachegate.store import MemoryStore
from cachegate.tee import LiveStream, State, StreamDiverged

pytestmark = pytest.mark.anyio

TENANT = [(b"x-tenant", b"t1")]
SSE = (b"content-type", b"text/event-stream; charset=utf-8")
BURST = Streams()
EVENTS = [b"data: one\n\n", b"data: two\n\n", b"data: three\n\n", b"data: [DONE]\n\n"]


class StreamApp:
    """A raw ASGI app that streams `chunks` (one body message each, then an empty last one).

    `gap` seconds between chunks; `hold` makes every call after its first chunk wait for the
    event; `fail_call` raises after two chunks in that call; `stop_call` returns after two
    chunks without the last message; `vary` makes each call's chunks differ.
    """

    def __init__(self, chunks: Sequence[bytes] = EVENTS, **options: Any) -> None:
        self.chunks = list(chunks)
        self.gap: float = options.get("gap", 0.0)
        self.hold: asyncio.Event | None = options.get("hold")
        self.fail_call: int | None = options.get("fail_call")
        self.stop_call: int | None = options.get("stop_call")
        self.vary: bool = options.get("vary", False)
        self.headers: list[tuple[bytes, bytes]] = options.get("headers", [SSE])
        self.ids: bool = options.get("ids", False)
        self.calls = 0
        self.first_sent = asyncio.Event()

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        self.calls += 1
        call = self.calls
        while (await receive()).get("more_body", False):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        for index, chunk in enumerate(self.chunks):
            if index and self.gap:
                await asyncio.sleep(self.gap)
            if index == 1 and self.hold is not None:
                await self.hold.wait()
            if index == 2 and call == self.fail_call:
                raise RuntimeError("the model failed mid-stream")
            if index == 2 and call == self.stop_call:
                return
            if self.vary:
                chunk = chunk.replace(b"data: ", f"data: {call}-".encode())
            if self.ids:
                chunk = f"id: {call}\n".encode() + chunk
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if index == 0:
                self.first_sent.set()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def make_gate(
    streams: Streams | None = BURST, *, rollout: StaticRollout | None = None, **options: Any
) -> CacheGate:
    policy_options = options.pop("policy", {})
    return CacheGate(
        policies=[
            Policy("/x", tenant=trusted_header("x-tenant"), streams=streams, **policy_options)
        ],
        metrics=Metrics(registry=CollectorRegistry()),
        store=MemoryStore(),
        rollout=rollout,
        **options,
    )


async def ask(app: Any, gate: CacheGate, **options: Any) -> Exchange:
    headers = options.pop("headers", TENANT)
    return await drive(CacheGateMiddleware(app, gate), path="/x", headers=headers, **options)


def bodies(exchange: Exchange) -> list[tuple[bytes, bool]]:
    return [
        (bytes(m.get("body", b"")), bool(m.get("more_body", False)))
        for m in exchange.messages
        if m["type"] == "http.response.body"
    ]


def sample(gate: CacheGate, name: str, **labels: str) -> float:
    registry = gate.metrics.registry
    assert registry is not None
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def uncacheable(gate: CacheGate, reason: str) -> float:
    return sample(gate, "cachegate_uncacheable_responses_total", reason=reason)


# ---- a hit replays the miss ----------------------------------------------------------------


async def test_a_hit_replays_the_stream_chunk_for_chunk_with_the_original_headers() -> None:
    app = StreamApp(headers=[SSE, (b"x-model", b"m1")])
    gate = make_gate()
    miss = await ask(app, gate)
    hit = await ask(app, gate)
    assert (miss.cachegate, hit.cachegate) == ("miss", "hit")
    assert app.calls == 1
    assert bodies(hit) == bodies(miss)
    assert [b for b, _ in bodies(miss)] == [*EVENTS, b""]
    assert hit.header("content-type") == "text/event-stream; charset=utf-8"
    assert hit.header("x-model") == "m1"
    assert hit.header("content-length") is None  # it streams, as the original did
    assert sample(gate, "cachegate_stream_hits_total", source="store") == 1
    assert sample(gate, "cachegate_stream_first_byte_seconds_count", served="hit") == 1
    assert sample(gate, "cachegate_stream_first_byte_seconds_count", served="fresh") == 1


async def test_chunked_json_lines_are_cached_too() -> None:
    lines = [b'{"token":"a"}\n', b'{"token":"b"}\n']
    app = StreamApp(lines, headers=[(b"content-type", b"application/x-ndjson")])
    gate = make_gate()
    miss = await ask(app, gate)
    hit = await ask(app, gate)
    assert hit.cachegate == "hit"
    assert bodies(hit) == bodies(miss)


async def test_without_stream_options_a_stream_still_passes_through_unstored() -> None:
    app = StreamApp()
    gate = make_gate(streams=None)
    for _ in range(2):
        exchange = await ask(app, gate)
        assert exchange.cachegate is None  # an event stream passes through untouched
        assert [b for b, _ in bodies(exchange)] == [*EVENTS, b""]
    assert app.calls == 2
    assert uncacheable(gate, "streamed") == 2


# ---- only a normally completed stream is stored --------------------------------------------


async def test_an_app_exception_mid_stream_is_never_stored() -> None:
    app = StreamApp(fail_call=1)
    gate = make_gate()
    with pytest.raises(RuntimeError):
        await ask(app, gate)
    assert uncacheable(gate, "stream_error") == 1
    again = await ask(app, gate)
    assert again.cachegate == "miss"
    assert (await ask(app, gate)).cachegate == "hit"


async def test_a_stream_the_app_left_unfinished_is_never_stored() -> None:
    app = StreamApp(stop_call=1)
    gate = make_gate()
    await ask(app, gate)
    assert uncacheable(gate, "stream_incomplete") == 1
    assert (await ask(app, gate)).cachegate == "miss"


async def test_a_client_disconnect_mid_stream_is_never_stored() -> None:
    """The client leaves after the first chunk: the app sees `http.disconnect` and stops."""
    gate = make_gate()
    first = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [SSE]})
        await send({"type": "http.response.body", "body": EVENTS[0], "more_body": True})
        first.set()
        if (await receive())["type"] == "http.disconnect":
            return  # as Starlette's StreamingResponse does when its client leaves
        raise AssertionError("expected a disconnect")

    sent = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> Message:
        if sent:
            return sent.pop(0)
        await first.wait()
        return {"type": "http.disconnect"}

    await ask(app, gate, receive=receive)
    assert uncacheable(gate, "stream_disconnected") == 1
    complete = StreamApp()
    assert (await ask(complete, gate)).cachegate == "miss"


async def test_an_oversized_stream_is_never_stored() -> None:
    app = StreamApp([b"data: " + b"x" * 400 + b"\n\n"] * 5)
    gate = make_gate(limits=Limits(max_entry_bytes=1000))
    first = await ask(app, gate)
    assert len(b"".join(b for b, _ in bodies(first))) > 1000  # served whole all the same
    assert uncacheable(gate, "stream_too_large") == 1
    assert (await ask(app, gate)).cachegate == "miss"


async def test_a_stream_without_its_required_terminal_event_is_never_stored() -> None:
    streams = Streams(terminal=b"data: [DONE]")
    unterminated = StreamApp(EVENTS[:-1])
    gate = make_gate(streams)
    await ask(unterminated, gate)
    assert uncacheable(gate, "stream_unterminated") == 1
    assert (await ask(unterminated, gate)).cachegate == "miss"
    terminated = make_gate(streams)
    app = StreamApp()
    await ask(app, terminated)
    assert (await ask(app, terminated)).cachegate == "hit"


async def test_a_stream_that_sets_a_cookie_or_says_private_is_never_stored_nor_shared() -> None:
    for header in ((b"set-cookie", b"session=abc"), (b"cache-control", b"private")):
        hold = asyncio.Event()
        app = StreamApp(headers=[SSE, header], hold=hold)
        gate = make_gate()
        leader = asyncio.create_task(ask(app, gate))
        await app.first_sent.wait()
        follower = asyncio.create_task(ask(app, gate))
        await asyncio.sleep(0.05)
        hold.set()
        results = await asyncio.gather(leader, follower)
        assert app.calls == 2  # the follower computed its own answer, nothing was shared
        assert {r.cachegate for r in results} == {"miss"}
        assert (await ask(app, gate)).cachegate == "miss"


# ---- pacing --------------------------------------------------------------------------------


async def test_paced_replay_waits_the_recorded_gaps_scaled_and_capped() -> None:
    waits: list[float] = []
    sent: list[Message] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async def send(message: Message) -> None:
        sent.append(message)

    pieces = [(0, b"a"), (100_000, b"b"), (400_000, b"c"), (2_400_000, b"")]
    streams = Streams(pacing=Pacing.PACED, factor=0.5, cap=0.5)
    await send_stream(send, 200, [SSE], pieces, b"hit", streams, sleep)
    assert waits == pytest.approx([0.05, 0.15, 0.5])
    assert [(m["body"], m["more_body"]) for m in sent[1:]] == [
        (b"a", True),
        (b"b", True),
        (b"c", True),
        (b"", False),
    ]
    waits.clear()
    await send_stream(send, 200, [SSE], pieces, b"hit", Streams(), sleep)
    assert waits == []  # burst, the default


async def test_a_paced_hit_keeps_the_recorded_timing() -> None:
    """Behaviour, loosely: the paced replay takes at least half the recorded span."""
    app = StreamApp([b"data: %d\n\n" % i for i in range(6)], gap=0.04)
    gate = make_gate(Streams(pacing=Pacing.PACED, cap=1.0))
    await ask(app, gate)
    started = time.perf_counter()
    hit = await ask(app, gate)
    elapsed = time.perf_counter() - started
    assert hit.cachegate == "hit"
    assert elapsed >= 0.5 * 5 * 0.04


def test_streams_options_are_checked() -> None:
    with pytest.raises(ValueError):
        Streams(factor=-1)
    with pytest.raises(ValueError):
        Streams(terminal=b"  ")
    assert Streams(pacing="paced").pacing is Pacing.PACED  # type: ignore[arg-type]


# ---- the live tee --------------------------------------------------------------------------


async def test_identical_requests_during_a_stream_share_it_live() -> None:
    hold = asyncio.Event()
    app = StreamApp(hold=hold)
    gate = make_gate()
    leader = asyncio.create_task(ask(app, gate))
    await app.first_sent.wait()
    received = [asyncio.Event() for _ in range(19)]

    def first_chunk(event: asyncio.Event) -> Any:
        async def on_send(message: Message) -> None:
            if message["type"] == "http.response.body":
                event.set()

        return on_send

    followers = [asyncio.create_task(ask(app, gate, on_send=first_chunk(e))) for e in received]
    # every follower gets the first chunk while the leader is still producing the second
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in received)), 5)
    assert not leader.done()
    hold.set()
    exchanges = [await leader, *await asyncio.gather(*followers)]
    assert app.calls == 1
    assert [e.cachegate for e in exchanges].count("miss") == 1
    assert {e.cachegate for e in exchanges[1:]} == {"hit"}
    for exchange in exchanges[1:]:
        assert bodies(exchange) == bodies(exchanges[0])
    assert sample(gate, "cachegate_stream_hits_total", source="tee") == 19
    assert sample(gate, "cachegate_stream_tee_followers_total", outcome="complete") == 19
    assert len(gate.live_streams) == 0
    assert (await ask(app, gate)).cachegate == "hit"  # and it was stored


async def test_a_leader_that_fails_mid_stream_releases_its_followers_to_compute() -> None:
    hold = asyncio.Event()
    app = StreamApp(hold=hold, fail_call=1)
    gate = make_gate()
    leader = asyncio.create_task(ask(app, gate))
    await app.first_sent.wait()
    followers = [asyncio.create_task(ask(app, gate)) for _ in range(5)]
    await asyncio.sleep(0.05)
    hold.set()
    with pytest.raises(RuntimeError):
        await leader
    exchanges = await asyncio.gather(*followers)
    assert app.calls == 1 + 5  # each follower computed on its own
    for exchange in exchanges:
        # what was already relayed is not sent twice: the whole stream, exactly once
        assert bodies(exchange) == [(e, True) for e in EVENTS] + [(b"", False)]
        assert exchange.cachegate == "hit"  # the start was the relayed one
    assert sample(gate, "cachegate_stream_tee_followers_total", outcome="fallback") == 5
    assert (await ask(app, gate)).cachegate == "hit"


async def test_a_follower_whose_own_answer_differs_is_aborted_never_spliced() -> None:
    hold = asyncio.Event()
    app = StreamApp(hold=hold, fail_call=1, vary=True)
    gate = make_gate()
    leader = asyncio.create_task(ask(app, gate))
    await app.first_sent.wait()
    follower = asyncio.create_task(ask(app, gate))
    await asyncio.sleep(0.05)
    hold.set()
    with pytest.raises(RuntimeError):
        await leader
    with pytest.raises(StreamDiverged):
        await follower
    assert sample(gate, "cachegate_stream_tee_followers_total", outcome="diverged") == 1


async def test_a_live_stream_holds_at_most_its_bound_then_fails() -> None:
    stream = LiveStream(200, [SSE], max_bytes=10)
    stream.publish(b"12345", final=False)
    assert stream.size == 5
    stream.publish(b"123456", final=False)
    assert stream.state is State.FAILED
    assert stream.size == 0


async def test_followers_of_an_oversized_stream_fall_back_to_fresh() -> None:
    hold = asyncio.Event()
    chunks = [b"data: " + b"x" * 300 + b"\n\n"] * 4
    app = StreamApp(chunks, hold=hold)
    gate = make_gate(limits=Limits(max_entry_bytes=1000))
    leader = asyncio.create_task(ask(app, gate))
    await app.first_sent.wait()
    follower = asyncio.create_task(ask(app, gate))
    await asyncio.sleep(0.05)
    hold.set()
    first, second = await asyncio.gather(leader, follower)
    assert bodies(second) == bodies(first)
    assert app.calls == 2
    assert sample(gate, "cachegate_stream_tee_followers_total", outcome="fallback") == 1


# ---- comparisons on the events' data -------------------------------------------------------


async def test_shadow_compares_streams_on_the_data_of_their_events() -> None:
    """`id:` lines differ per computation; the data does not: a match."""
    shadow = StaticRollout(Decision(l1=Mode.SHADOW, l2=Mode.OFF))
    app = StreamApp(ids=True)
    gate = make_gate(rollout=shadow)
    assert (await ask(app, gate)).cachegate == "shadow-miss"
    assert (await ask(app, gate)).cachegate == "shadow-hit"
    assert sample(gate, "cachegate_comparisons_total", **_cmp("shadow", "match")) == 1
    changed = StreamApp(vary=True)
    assert (await ask(changed, gate)).cachegate == "shadow-hit"
    assert sample(gate, "cachegate_comparisons_total", **_cmp("shadow", "mismatch")) == 1


async def test_verify_and_the_noise_baseline_compare_stream_content() -> None:
    verify = StaticRollout(Decision(l1=Mode.SERVE, l2=Mode.OFF, verify=True))
    app = StreamApp(ids=True)
    gate = make_gate(rollout=verify, policy={"rerun_safe": True})
    await ask(app, gate)
    assert (await ask(app, gate)).cachegate == "hit"
    await gate.drain()
    assert sample(gate, "cachegate_comparisons_total", **_cmp("verify", "match")) == 1
    shadow = StaticRollout(Decision(l1=Mode.SHADOW, l2=Mode.OFF))
    noisy = make_gate(
        rollout=shadow, limits=Limits(noise_sample_rate=1.0), policy={"rerun_safe": True}
    )
    await ask(StreamApp(ids=True), noisy)
    await noisy.drain()
    assert sample(noisy, "cachegate_comparisons_total", **_cmp("noise", "match")) == 1


def _cmp(kind: str, outcome: str) -> dict[str, str]:
    return {"cache_layer": "query_result", "kind": kind, "outcome": outcome}


# ---- the same admission as any hit ---------------------------------------------------------


async def test_a_streamed_hit_is_served_only_to_the_same_tenant_and_past_the_guard() -> None:
    allowed = {"yes"}

    def guard(request: RequestView) -> bool:
        return request.header("x-allowed") in allowed

    app = StreamApp()
    gate = make_gate(policy={"guard": guard})
    assert (await ask(app, gate, headers=[*TENANT, (b"x-allowed", b"yes")])).cachegate == "miss"
    assert (await ask(app, gate, headers=[*TENANT, (b"x-allowed", b"yes")])).cachegate == "hit"
    refused = await ask(app, gate, headers=[*TENANT, (b"x-allowed", b"no")])
    assert refused.cachegate == "bypass"
    other = await ask(app, gate, headers=[(b"x-tenant", b"t2"), (b"x-allowed", b"yes")])
    assert other.cachegate == "miss"
    assert app.calls == 3


async def test_cancelling_the_leader_mid_stream_releases_its_followers() -> None:
    """The leader's task is cancelled (its server connection dropped) while it streams."""
    hold = asyncio.Event()
    app = StreamApp(hold=hold)
    gate = make_gate()
    leader = asyncio.create_task(ask(app, gate))
    await app.first_sent.wait()
    followers = [asyncio.create_task(ask(app, gate)) for _ in range(3)]
    await asyncio.sleep(0.05)
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    hold.set()
    exchanges = await asyncio.gather(*followers)
    assert app.calls == 1 + 3
    for exchange in exchanges:
        assert bodies(exchange) == [(e, True) for e in EVENTS] + [(b"", False)]
    assert sample(gate, "cachegate_stream_tee_followers_total", outcome="fallback") == 3
    assert uncacheable(gate, "stream_error") == 1
    assert len(gate.live_streams) == 0
