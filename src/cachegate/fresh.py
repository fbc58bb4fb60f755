"""A fresh answer on a cached route: the app run recorded under the entry limit, in a
`cachegate.fresh` span, with a streamed answer's time to first byte; and, for a leader of
identical requests, its stream shared live while it is produced (the tee)."""

from __future__ import annotations

import time
from typing import Any

from cachegate import tracing
from cachegate.gate import CacheGate
from cachegate.policy import Policy
from cachegate.responses import (
    ResponseRecorder,
    add_header,
    refusal,
    send_entry,
    storable_headers,
)
from cachegate.singleflight import Flight, waited
from cachegate.store.codec import Entry
from cachegate.tee import LiveStream, Publisher
from cachegate.types import ASGIApp, Headers, Message, Receive, Scope, Send
from cachegate.vocabulary import Layer, Served, UncacheableReason


class Computation:
    """Computes one request's fresh answer; one per request, made when the request needs it."""

    def __init__(
        self,
        app: ASGIApp,
        gate: CacheGate,
        policy: Policy,
        scope: Scope,
        receive: Receive,
        started: float,
    ) -> None:
        self.app = app
        self.gate = gate
        self.policy = policy
        self.scope = scope
        self.receive = receive
        self.started = started
        self.counts = gate.counts(policy.route)
        self.first_byte: float | None = None

    def recorder(self, send: Send, **options: Any) -> ResponseRecorder:
        """A recorder of the answer under the entry limit and the route's stream options."""
        options.setdefault("streams", self.policy.streams)
        return ResponseRecorder(send, max_bytes=self.gate.limits.max_entry_bytes, **options)

    async def run(self, recorder: ResponseRecorder) -> None:
        """Run the app into `recorder`; an exception reaches the caller as the app raised it."""
        attributes = {tracing.LAYER: Layer.RESULT, tracing.ROUTE: self.policy.route}
        with tracing.around_app("cachegate.fresh", attributes) as span:
            try:
                await self.app(self.scope, recorder.watch(self.receive), recorder)
            except BaseException as error:
                recorder.finish(error)
                if recorder.streaming:
                    reason = recorder.reason or UncacheableReason.STREAM_ERROR
                    self.counts.uncacheable(reason)
                    self.observe_first_byte("fresh", True)
                raise
            recorder.finish()
            span.set_attribute(tracing.OUTCOME, recorder.reason or "storable")
        self.observe_first_byte("fresh", recorder.streaming)

    def timed(self, send: Send) -> Send:
        """Wrap `send` to note when the first body message goes to the client."""

        async def timed(message: Message) -> None:
            if self.first_byte is None and message["type"] == "http.response.body":
                self.first_byte = time.perf_counter()
            await send(message)

        return timed

    def observe_first_byte(self, served: str, streamed: bool) -> None:
        """Count a streamed answer's time to first byte (answers that did not stream do not)."""
        if streamed and self.first_byte is not None:
            elapsed = self.first_byte - self.started
            self.counts.first_byte(served, elapsed)

    def publisher(self, send: Send, flight: Flight[Entry | LiveStream]) -> Publisher:
        """Wrap a leader's `send` so its stream, once it turns out to stream, is shared live."""
        return Publisher(send, lambda status, headers: self._tee(flight, status, headers))

    def _tee(
        self, flight: Flight[Entry | LiveStream], status: int, headers: Headers
    ) -> LiveStream | None:
        """Open the live stream of a leader's response, if it may be shared: only what may be
        stored is (status 200, no cookie, no `private`...). Waiting followers join at once."""
        if refusal(status, headers, streams=True) is not None:
            return None
        gate = self.gate
        live = gate.live_streams.open(
            flight.key, status, list(storable_headers(headers)), gate.limits.max_entry_bytes
        )
        if live is not None:
            gate.flights.finish(flight, live)
        return live

    async def without_store(self, key: str, send: Send) -> None:
        """Answer with no store: identical requests in this process share one computation,
        one that starts after they arrived, so it never predates a write their clients saw."""
        gate, wait = self.gate, self.gate.limits.single_flight_wait
        flight, leads = gate.flights.follow(key)
        if not leads:
            shared = await waited(gate.flights.join(flight, 2 * wait), self.counts.shared)
            if isinstance(shared, Entry):
                await send_entry(
                    send, shared.status, shared.headers, shared.body, Served.BYPASS.header
                )
            else:
                await self.app(self.scope, self.receive, add_header(send, Served.BYPASS.header))
            return
        entry = None
        try:
            await gate.flights.start(flight, wait)
            recorder = self.recorder(send, header=Served.BYPASS.header, streams=None)
            await self.run(recorder)
            if recorder.storable:
                entry = Entry(
                    recorder.status, storable_headers(recorder.headers), recorder.body, ()
                )
        finally:
            gate.flights.finish(flight, entry)
