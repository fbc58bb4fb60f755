"""`CacheGateMiddleware`: the pure-ASGI entry. It routes, decides and orchestrates; the cache
logic lives in `results`, `invalidation`, `experiment`, `writes` and the store.

Routes without a policy or write rule go to the app untouched. A matched request has its body
read (capped) and again exactly; the response says what happened in `X-CacheGate`. The cache
never turns a good request into an error: every store failure falls back to the fresh path.
"""

from __future__ import annotations

import inspect
import time
from typing import Any

from cachegate import tracing
from cachegate.body import RequestBody, read_body
from cachegate.comparators import Outcome
from cachegate.experiment import Experiment, Observation
from cachegate.gate import CacheGate
from cachegate.policy import (
    BadRequest,
    Guard,
    Match,
    Policy,
    RequestView,
)
from cachegate.responses import (
    ResponseRecorder,
    add_header,
    answer_content,
    refusal,
    request_refuses_cache,
    send_entry,
    send_stream,
    storable_headers,
)
from cachegate.results import Found, RequestFacts
from cachegate.rollout import OFF, Decision, Mode, enter_decision, exit_decision
from cachegate.singleflight import Flight
from cachegate.store.codec import Entry, StreamEntry
from cachegate.tee import LeaderFailed, LiveStream, Publisher, Resume, StreamDiverged
from cachegate.types import ASGIApp, Message, Receive, Scope, Send
from cachegate.vocabulary import BypassReason, ComparisonKind, Layer, UncacheableReason
from cachegate.writes import WriteResponder

SHADOW, VERIFY, NOISE = ComparisonKind.SHADOW, ComparisonKind.VERIFY, ComparisonKind.NOISE

STATE_KEY = "cachegate"
"""The decision is at `request.state.cachegate` (and in `cachegate.current_decision()`)."""


class CacheGateMiddleware:
    """Caches whole responses of the routes `gate` has policies for."""

    def __init__(self, app: ASGIApp, gate: CacheGate) -> None:
        self.app = app
        self.gate = gate
        self._match = gate.router.match

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                receive = self._lifespan(receive)
            await self.app(scope, receive, send)
            return
        match = self._match(scope["method"], scope["path"])
        if match is None:
            await self.app(scope, receive, send)
            return
        if isinstance(match.rule, Policy):
            await CacheResponder(self.app, self.gate, match.rule, match)(scope, receive, send)
        else:
            await WriteResponder(self.app, self.gate, match.rule, match)(scope, receive, send)

    def _lifespan(self, receive: Receive) -> Receive:
        """Start the gate (warm the store) at startup and retry pending invalidations at
        shutdown, before the app sees either message."""

        async def lifespan_receive() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.gate.start()
            elif message["type"] == "lifespan.shutdown":
                await self.gate.shutdown()
            return message

        return lifespan_receive


async def _refusal(guard: Guard, request: RequestView) -> BypassReason | None:
    """Why the policy's guard refuses the request (the app decides), or None if it passes."""
    try:
        verdict = guard(request)
        if inspect.isawaitable(verdict):
            verdict = await verdict
    except Exception:
        return BypassReason.GUARD_ERROR
    return None if verdict is True else BypassReason.GUARD_REFUSED


class CacheResponder:
    """Handles one request to a cached route: bypass, hit, miss or shadow."""

    def __init__(self, app: ASGIApp, gate: CacheGate, policy: Policy, match: Match) -> None:
        self.app = app
        self.gate = gate
        self.policy = policy
        self.match = match
        self.path = "bypass"
        self.counts = gate.route_metrics[policy.route]
        self.started = 0.0
        self.first_byte: float | None = None
        self.decision = OFF
        self.tenant: str | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.started = time.perf_counter()
        try:
            body = await read_body(receive, self.gate.limits.max_body_bytes)
            again = body.receive_again(receive)
            admitted = await self._admit(scope, body)
            _remember(scope, self.decision)
            tokens = enter_decision(self.decision, self.tenant)
            try:
                if isinstance(admitted, BypassReason):
                    self.counts.bypass(admitted)
                    await self.app(scope, again, add_header(send, b"bypass"))
                elif self.decision.l1 is Mode.SERVE:
                    await self._serve(admitted, self.decision, scope, body, again, send)
                else:
                    await self._shadow(admitted, scope, body, again, send)
            finally:
                exit_decision(tokens)
        finally:
            self.counts.duration[self.path].observe(time.perf_counter() - self.started)

    async def _admit(self, scope: Scope, body: RequestBody) -> RequestFacts | BypassReason:
        """The request's facts, or the reason it bypasses (the app answers as it would).

        Sets the tenant and the decision as soon as they are known, so a bypass after them
        still carries them to the app's code (the L2 embedder reads them).
        """
        gate, policy = self.gate, self.policy
        if not body.complete:
            return BypassReason.BODY_TOO_LARGE if body.too_large else BypassReason.DISCONNECTED
        headers = scope.get("headers", [])
        if sum(len(name) + len(value) for name, value in headers) > gate.limits.max_header_bytes:
            return BypassReason.HEADERS_TOO_LARGE
        request = RequestView.of(scope, self.match.path_params, body.body)
        try:
            tenant = gate.results.tenant(policy, request)
        except BadRequest as error:
            return error.reason
        if tenant is None:
            return BypassReason.NO_TENANT
        self.tenant = tenant
        self.decision = decision = gate.rollout.decide(tenant)
        self.counts.decided(decision.l1, decision.l2)
        if decision.l1 is Mode.OFF:
            return BypassReason.MODE_OFF
        if policy.honor_request_no_cache and request_refuses_cache(headers):
            return BypassReason.REQUEST_NO_CACHE
        if policy.guard is not None:
            refused = await _refusal(policy.guard, request)
            if refused is not None:
                return refused
        try:
            facts = gate.results.facts(policy, request, tenant)
        except BadRequest as error:
            return error.reason
        if gate.invalidator.is_pending(facts.scope):
            return BypassReason.INVALIDATION_PENDING
        return facts

    async def _lookup(self, facts: RequestFacts, mode: Mode) -> Found:
        span = tracing.tracer.start_span("cachegate.lookup")
        try:
            found = await self.gate.results.lookup(facts)
            if span.is_recording():
                outcome = "error" if found.generations is None else "hit" if found.entry else "miss"
                span.set_attributes(
                    {
                        tracing.LAYER: Layer.RESULT,
                        tracing.MODE: mode.value,
                        tracing.ROUTE: facts.policy.route,
                        tracing.OUTCOME: outcome,
                    }
                )
            return found
        finally:
            span.end()

    async def _fresh(self, scope: Scope, receive: Receive, recorder: ResponseRecorder) -> None:
        attributes = {tracing.LAYER: Layer.RESULT, tracing.ROUTE: self.policy.route}
        with tracing.around_app("cachegate.fresh", attributes) as span:
            try:
                await self.app(scope, recorder.watch(receive), recorder)
            except BaseException as error:
                recorder.finish(error)
                if recorder.streaming:
                    self.gate.metrics.uncacheable.labels(
                        recorder.reason or UncacheableReason.STREAM_ERROR
                    ).inc()
                    self._observe_first_byte("fresh", True)
                raise
            recorder.finish()
            span.set_attribute(tracing.OUTCOME, recorder.reason or "storable")
        self._observe_first_byte("fresh", recorder.streaming)

    def _recorder(self, send: Send | None, **options: Any) -> ResponseRecorder:
        """A recorder of a fresh answer under this policy's limits and stream options."""
        return ResponseRecorder(
            send, max_bytes=self.gate.limits.max_entry_bytes, streams=self.policy.streams, **options
        )

    def _timed(self, send: Send) -> Send:
        """Wrap `send` to note when the first body message goes to the client."""

        async def timed(message: Message) -> None:
            if self.first_byte is None and message["type"] == "http.response.body":
                self.first_byte = time.perf_counter()
            await send(message)

        return timed

    def _observe_first_byte(self, served: str, streamed: bool) -> None:
        """Count a streamed answer's time to first byte (answers that did not stream do not)."""
        if streamed and self.first_byte is not None:
            elapsed = self.first_byte - self.started
            self.gate.metrics.stream_first_byte.labels(served).observe(elapsed)

    async def _fill(
        self, facts: RequestFacts, generations: tuple[int, ...], recorder: ResponseRecorder
    ) -> Entry | None:
        if not recorder.storable:
            self.gate.metrics.uncacheable.labels(recorder.reason or UncacheableReason.ERROR).inc()
            return None
        with tracing.tracer.start_as_current_span("cachegate.store_write") as span:
            span.set_attributes({tracing.LAYER: Layer.RESULT, tracing.ROUTE: self.policy.route})
            return await self.gate.results.fill(
                facts,
                generations,
                status=recorder.status,
                headers=storable_headers(recorder.headers),
                body=recorder.body,
                chunks=recorder.chunks,
            )

    async def _serve(
        self,
        facts: RequestFacts,
        decision: Decision,
        scope: Scope,
        body: RequestBody,
        receive: Receive,
        send: Send,
    ) -> None:
        gate = self.gate
        found = await self._lookup(facts, Mode.SERVE)
        if found.entry is not None:
            return await self._hit(found, facts, decision, scope, body, send)
        generations = await gate.results.start_generations(found, facts)
        if generations is None:
            self.counts.bypass(BypassReason.STORE_ERROR)
            await self._without_store(facts, scope, receive, send)
            return
        flight = facts.key + ":" + ",".join(map(str, generations))
        live = gate.live_streams.get(flight)
        if live is not None:
            gate.metrics.single_flight.labels("shared").inc()
            return await self._follow(live, facts, generations, scope, receive, send)
        leading = gate.flights.lead(flight, gate.limits.single_flight_wait)
        if leading is None:
            try:
                shared = await gate.flights.wait(flight, gate.limits.single_flight_wait)
            except TimeoutError:
                shared, outcome = None, "timeout"
            else:
                outcome = "not_shared" if shared is None else "shared"
            gate.metrics.single_flight.labels(outcome).inc()
            if isinstance(shared, LiveStream):
                return await self._follow(shared, facts, generations, scope, receive, send)
            if shared is not None:
                self.path = "shared"  # waited on a leader: not a hit's latency
                self.counts.hits.inc()
                self._avoided()
                await send_entry(send, shared.status, shared.headers, shared.body, b"hit")
                return
            self.counts.misses.inc()
            await self._miss(facts, generations, scope, receive, send)
            return
        self.counts.misses.inc()
        entry = None
        try:
            entry = await self._miss(facts, generations, scope, receive, send, leading)
        finally:
            gate.flights.finish(leading, entry)

    async def _without_store(
        self, facts: RequestFacts, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """The store gave no generations: serve fresh, nothing stored, yet one computation
        for identical requests in this process: one that starts after they arrived, so it
        never predates a write their clients saw."""
        gate = self.gate
        flight, leads = gate.flights.follow(facts.key)
        if not leads:
            try:
                shared = await gate.flights.join(flight, 2 * gate.limits.single_flight_wait)
            except TimeoutError:
                shared, outcome = None, "timeout"
            else:
                outcome = "not_shared" if shared is None else "shared"
            gate.metrics.single_flight.labels(outcome).inc()
            if isinstance(shared, Entry):
                await send_entry(send, shared.status, shared.headers, shared.body, b"bypass")
            else:
                await self.app(scope, receive, add_header(send, b"bypass"))
            return
        entry = None
        try:
            await gate.flights.start(flight, gate.limits.single_flight_wait)
            recorder = ResponseRecorder(send, max_bytes=gate.limits.max_entry_bytes, header=_bypass)
            await self._fresh(scope, receive, recorder)
            if recorder.storable:
                headers = storable_headers(recorder.headers)
                entry = Entry(recorder.status, headers, recorder.body, ())
        finally:
            gate.flights.finish(flight, entry)

    async def _miss(
        self,
        facts: RequestFacts,
        generations: tuple[int, ...],
        scope: Scope,
        receive: Receive,
        send: Send,
        flight: Flight[Entry | LiveStream] | None = None,
    ) -> Entry | None:
        """Compute fresh and store; a leader (`flight`) shares a stream live while it lasts."""
        self.path = "miss"
        publisher = None
        send = self._timed(send)
        if flight is not None and self.policy.streams is not None:
            publisher = Publisher(send, lambda status, headers: self._tee(flight, status, headers))
            send = publisher
        recorder = self._recorder(send, header=_miss)
        try:
            await self._fresh(scope, receive, recorder)
            live = publisher.stream if publisher is not None else None
            if live is not None:
                live.close(recorder.storable)
            return await self._fill(facts, generations, recorder)
        finally:
            if publisher is not None and publisher.stream is not None:
                publisher.stream.fail()
                self.gate.live_streams.remove(flight.key if flight else "", publisher.stream)

    def _tee(
        self, flight: Flight[Entry | LiveStream], status: int, headers: list[tuple[bytes, bytes]]
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

    async def _follow(
        self,
        live: LiveStream,
        facts: RequestFacts,
        generations: tuple[int, ...],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        """Relay an identical request's live stream; if it fails, compute on our own."""
        followers = self.gate.metrics.stream_followers
        self.path = "hit"
        try:
            await live.follow(self._timed(send), b"hit")
        except LeaderFailed as failed:
            followers.labels("fallback").inc()
            self.counts.misses.inc()
            try:
                await self._miss(facts, generations, scope, receive, Resume(send, failed))
            except StreamDiverged:
                followers.labels("diverged").inc()
                raise
            return
        followers.labels("complete").inc()
        self.counts.hits.inc()
        self.gate.metrics.stream_hits.labels("tee").inc()
        self._avoided()
        self._observe_first_byte("tee", True)

    async def _hit(
        self,
        found: Found,
        facts: RequestFacts,
        decision: Decision,
        scope: Scope,
        body: RequestBody,
        send: Send,
    ) -> None:
        gate = self.gate
        entry = found.entry
        assert entry is not None
        self.path = "hit"
        self.counts.hits.inc()
        self._avoided()
        if found.chunks and self.policy.streams is not None:
            await self._send_stream(StreamEntry(entry, found.chunks), send)
        else:
            await send_entry(send, entry.status, entry.headers, entry.body, b"hit")
        if decision.verify and self.policy.rerun_safe:
            gate.background(self._verify(entry, facts, scope, body))

    async def _send_stream(self, stream: StreamEntry, send: Send) -> None:
        """Replay a stored stream in its chunks at the policy's pacing."""
        streams = self.policy.streams
        assert streams is not None
        entry = stream.entry
        timed = self._timed(send)
        await send_stream(timed, entry.status, entry.headers, stream.pieces(), b"hit", streams)
        self.gate.metrics.stream_hits.labels("store").inc()
        self._observe_first_byte("hit", True)

    def _avoided(self) -> None:
        """Count one fresh computation, and its cost, avoided by a hit."""
        self.counts.calls_avoided.inc()
        if self.policy.cost_per_call:
            self.counts.cost_avoided.inc(self.policy.cost_per_call)

    async def _verify(
        self, entry: Entry, facts: RequestFacts, scope: Scope, body: RequestBody
    ) -> None:
        """Recompute a served hit in the background and compare; a stale entry is dropped."""
        recorder = await self._rerun(scope, body)
        cached = answer_content(entry.body, entry.headers)
        outcome = await self._compare(VERIFY, cached, recorder, facts, entry.generations)
        if outcome is Outcome.MISMATCH:
            await self.gate.results.drop(facts)

    async def _shadow(
        self,
        facts: RequestFacts,
        scope: Scope,
        body: RequestBody,
        receive: Receive,
        send: Send,
    ) -> None:
        gate = self.gate
        self.path = "shadow"
        found = await self._lookup(facts, Mode.SHADOW)
        generations = await gate.results.start_generations(found, facts)
        label = b"shadow-hit" if found.entry is not None else b"shadow-miss"
        if found.generations is not None:
            result = "hit" if found.entry is not None else "miss"
            gate.metrics.shadow_lookups.labels(Layer.RESULT, result).inc()

        async def header() -> bytes:
            return label

        recorder = self._recorder(self._timed(send), header=header)
        await self._fresh(scope, receive, recorder)
        if found.entry is not None:
            cached = answer_content(found.entry.body, found.entry.headers)
            await self._compare(SHADOW, cached, recorder, facts, found.generations)
        if generations is not None:
            await self._fill(facts, generations, recorder)
        if (
            self.policy.rerun_safe
            and recorder.storable
            and gate.sample() < gate.limits.noise_sample_rate
        ):
            fresh = answer_content(recorder.body, recorder.headers)
            gate.background(self._noise(fresh, scope, body))

    async def _noise(self, fresh: bytes, scope: Scope, body: RequestBody) -> None:
        """Compute the same request again and compare fresh with fresh: the noise baseline."""
        recorder = await self._rerun(scope, body)
        await self._compare(NOISE, fresh, recorder)

    async def _rerun(self, scope: Scope, body: RequestBody) -> ResponseRecorder:
        """Compute the request again in the background, recorded and judged, never sent."""
        recorder = self._recorder(None)
        try:
            await self.app(_copy(scope), body.rerun(), recorder)
        except BaseException as error:
            recorder.finish(error)
            raise
        recorder.finish()
        return recorder

    async def _compare(
        self,
        kind: ComparisonKind,
        cached: bytes,
        recorder: ResponseRecorder,
        facts: RequestFacts | None = None,
        since: tuple[int, ...] | None = None,
    ) -> Outcome | None:
        """Run the experiment: the cached (or first fresh) answer against the fresh one just
        recorded; with `facts`, a write to the scope since `since` explains a mismatch away."""
        gate = self.gate
        experiment = Experiment(
            kind, self.policy.route, self.policy.comparator, gate.metrics, gate.mismatches
        )
        fresh = answer_content(recorder.body, recorder.headers) if recorder.storable else None
        write_during = None
        if facts is not None and since is not None:
            checked_facts, checked_since = facts, since

            async def write_during() -> bool:
                return await gate.results.changed_since(checked_facts, checked_since)

        return await experiment.run(cached, Observation(fresh), write_during=write_during)


async def _miss() -> bytes:
    return b"miss"


async def _bypass() -> bytes:
    return b"bypass"


def _copy(scope: Scope) -> Scope:
    copied = dict(scope)
    copied["state"] = dict(scope.get("state", {}))
    return copied


def _remember(scope: Scope, decision: Decision) -> None:
    scope.setdefault("state", {})[STATE_KEY] = decision
