"""`CacheGateMiddleware`: the pure-ASGI entry. It routes, admits and orchestrates; the cache
logic lives in `keying`, `results`, `fresh`, `experiment`, `writes`, `singleflight` and the
store.

Routes without a policy or write rule go to the app untouched. A matched request is admitted
(tenant, rollout decision, then its body and keys) or bypasses with one reason; the response
says what happened in `X-CacheGate`. The cache never turns a good request into an error: every
store failure falls back to the fresh path.
"""

from __future__ import annotations

import time

from cachegate.body import RequestBody, declares_no_body, empty_body, read_body
from cachegate.extractors import BadRequest, RequestView, guard_refusal
from cachegate.fresh import Computation
from cachegate.gate import CacheGate
from cachegate.keying import RequestFacts
from cachegate.policy import Match, Policy
from cachegate.responses import (
    add_header,
    answer_content,
    request_refuses_cache,
    send_entry,
    send_stream,
)
from cachegate.results import Found
from cachegate.rollout import OFF, Mode, enter_decision, exit_decision
from cachegate.singleflight import Flight, waited
from cachegate.store.codec import Entry, StreamEntry
from cachegate.tee import LeaderFailed, LiveStream, Resume, StreamDiverged
from cachegate.types import ASGIApp, Headers, Receive, Scope, Send
from cachegate.vocabulary import BypassReason, CachePath, Served
from cachegate.writes import WriteResponder

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
                receive = self.gate.lifespan(receive)
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


class CacheResponder:
    """One request to a cached route: admitted to serve (hit, shared or miss) or shadow, or
    bypassed. The request's state lives in fields; each step takes only what is new."""

    __slots__ = (
        "app",
        "body",
        "computation",
        "counts",
        "decision",
        "gate",
        "limits",
        "match",
        "path",
        "policy",
        "receive",
        "scope",
        "send",
        "started",
        "tenant",
    )

    def __init__(self, app: ASGIApp, gate: CacheGate, policy: Policy, match: Match) -> None:
        self.app = app
        self.gate = gate
        self.policy = policy
        self.match = match
        self.limits = gate.limits
        self.counts = gate.counts(policy.route)
        self.path = CachePath.BYPASS
        self.decision = OFF
        self.tenant: str | None = None
        self.body: RequestBody | None = None
        self.scope: Scope = {}
        self.receive: Receive
        self.send: Send
        self.started = 0.0
        self.computation: Computation | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.started = time.perf_counter()
        self.scope, self.receive, self.send = scope, receive, send
        try:
            admitted = await self._admit()
            scope.setdefault("state", {})[STATE_KEY] = self.decision
            tokens = enter_decision(self.decision, self.tenant)
            try:
                if isinstance(admitted, BypassReason):
                    self.counts.bypass(admitted)
                    await self.app(scope, self.receive, add_header(send, Served.BYPASS.header))
                elif self.decision.l1 is Mode.SERVE:
                    await self._serve(admitted)
                else:
                    await self._shadow(admitted)
            finally:
                exit_decision(tokens)
        finally:
            self.counts.finished(self.path, time.perf_counter() - self.started)

    async def _admit(self) -> RequestFacts | BypassReason:
        """The request's facts, or the one reason it bypasses (the app answers as it would).

        The tenant and decision come first and are kept as soon as known, so a bypass after
        them still carries them to the app (the L2 embedder reads them). A request whose layer
        is off costs no more: its header block is not summed and its body not read (unless the
        tenant is in the body); the body is read, capped, before anything else needs it.
        """
        gate, policy = self.gate, self.policy
        request = RequestView.of(self.scope, self.match.path_params, b"")
        if policy.tenant_in_body and (unread := await self._read_body(request)):
            return unread
        try:
            tenant = gate.keying.tenant(policy, request)
        except BadRequest as error:
            return error.reason
        if tenant is None:
            return BypassReason.NO_TENANT
        self.tenant = tenant
        self.decision = decision = gate.rollout.decide(tenant)
        self.counts.decided(decision.l1, decision.l2)
        if decision.l1 is Mode.OFF:
            return BypassReason.MODE_OFF
        headers = request.headers
        if _header_bytes(headers) > self.limits.max_header_bytes:
            return BypassReason.HEADERS_TOO_LARGE
        if self.body is None and (unread := await self._read_body(request)):
            return unread
        if policy.honor_request_no_cache and request_refuses_cache(headers):
            return BypassReason.REQUEST_NO_CACHE
        if policy.guard is not None and (refused := await guard_refusal(policy.guard, request)):
            return refused
        try:
            facts = gate.keying.facts(policy, request, tenant)
        except BadRequest as error:
            return error.reason
        if gate.invalidator.is_pending(facts.scope):
            return BypassReason.INVALIDATION_PENDING
        return facts

    async def _read_body(self, request: RequestView) -> BypassReason | None:
        """Read the body (capped) for the extractors; the app gets exactly what was read.

        A request that declares no body, to a policy that does not need it, is not read: its
        body is empty, and the app reads the server's own message if it runs.
        """
        if not self.policy.needs_body and declares_no_body(self.scope):
            self.body = empty_body()
            return None
        body = self.body = await read_body(self.receive, self.limits.max_body_bytes)
        self.receive = body.receive_again(self.receive)
        if not body.complete:
            return BypassReason.BODY_TOO_LARGE if body.too_large else BypassReason.DISCONNECTED
        request.body = body.body
        return None

    async def _serve(self, facts: RequestFacts) -> None:
        gate, wait = self.gate, self.limits.single_flight_wait
        found = await gate.results.lookup(facts, Mode.SERVE)
        if found.entry is not None:
            return await self._hit(found, facts)
        generations = await gate.results.start_generations(found, facts)
        if generations is None:
            self.counts.bypass(BypassReason.STORE_ERROR)
            return await self._computation().without_store(facts.key, self.send)
        flight = facts.key + ":" + ",".join(map(str, generations))
        live = gate.live_streams.get(flight)
        if live is not None:
            self.counts.shared("shared")
            return await self._follow(live, facts, generations)
        leading = gate.flights.lead(flight, wait)
        if leading is None:
            shared = await waited(gate.flights.wait(flight, wait), self.counts.shared)
            if isinstance(shared, LiveStream):
                return await self._follow(shared, facts, generations)
            if shared is not None:
                self.path = CachePath.SHARED  # waited on a leader: not a hit's latency
                self._served_from_cache()
                return await send_entry(self.send, *_response(shared), Served.HIT.header)
            self.counts.missed()
            await self._miss(facts, generations, self.send)
            return
        self.counts.missed()
        entry = None
        try:
            entry = await self._miss(facts, generations, self.send, leading)
        finally:
            gate.flights.finish(leading, entry)

    async def _hit(self, found: Found, facts: RequestFacts) -> None:
        entry, streams = found.entry, self.policy.streams
        assert entry is not None
        self.path = CachePath.HIT
        self._served_from_cache()
        if found.chunks and streams is not None:
            computation = self._computation()
            pieces = StreamEntry(entry, found.chunks).pieces()
            timed = computation.timed(self.send)
            await send_stream(
                timed, entry.status, entry.headers, pieces, Served.HIT.header, streams
            )
            self.counts.stream_hit("store")
            computation.observe_first_byte("hit", True)
        else:
            await send_entry(self.send, *_response(entry), Served.HIT.header)
        if self.decision.verify and self.policy.rerun_safe and self.body is not None:
            verify = self.gate.experiments(self.app, self.policy).verify
            self.gate.background(verify(entry, facts, self.scope, self.body))

    async def _miss(
        self,
        facts: RequestFacts,
        generations: tuple[int, ...],
        send: Send,
        flight: Flight[Entry | LiveStream] | None = None,
    ) -> Entry | None:
        """Compute fresh and store; a leader (`flight`) shares a stream live while it lasts."""
        self.path = CachePath.MISS
        computation = self._computation()
        send = computation.timed(send)
        publisher = None
        if flight is not None and self.policy.streams is not None:
            send = publisher = computation.publisher(send, flight)
        recorder = computation.recorder(send, header=Served.MISS.header)
        try:
            await computation.run(recorder)
            if publisher is not None and publisher.stream is not None:
                publisher.stream.close(recorder.storable)
            return await self.gate.results.store_answer(facts, generations, recorder)
        finally:
            if flight is not None and publisher is not None and publisher.stream is not None:
                publisher.stream.fail()
                self.gate.live_streams.remove(flight.key, publisher.stream)

    async def _follow(
        self, live: LiveStream, facts: RequestFacts, generations: tuple[int, ...]
    ) -> None:
        """Relay an identical request's live stream; if it fails, compute on our own."""
        computation = self._computation()
        self.path = CachePath.HIT
        try:
            await live.follow(computation.timed(self.send), Served.HIT.header)
        except LeaderFailed as failed:
            self.counts.followed("fallback")
            self.counts.missed()
            try:
                await self._miss(facts, generations, Resume(self.send, failed))
            except StreamDiverged:
                self.counts.followed("diverged")
                raise
            return
        self.counts.followed("complete")
        self._served_from_cache()
        self.counts.stream_hit("tee")
        computation.observe_first_byte("tee", True)

    async def _shadow(self, facts: RequestFacts) -> None:
        """Look up, serve fresh, compare when there was an entry, store the fresh answer."""
        gate = self.gate
        self.path = CachePath.SHADOW
        found = await gate.results.lookup(facts, Mode.SHADOW)
        generations = await gate.results.start_generations(found, facts)
        label = (Served.SHADOW_HIT if found.entry is not None else Served.SHADOW_MISS).header
        if found.generations is not None:
            self.counts.shadow_lookup(found.entry is not None)
        computation = self._computation()
        recorder = computation.recorder(computation.timed(self.send), header=label)
        await computation.run(recorder)
        experiments = gate.experiments(self.app, self.policy)
        if found.entry is not None and found.generations is not None:
            await experiments.shadow(found.entry, recorder, facts, found.generations)
        if generations is not None:
            await gate.results.store_answer(facts, generations, recorder)
        noisy = gate.sample() < self.limits.noise_sample_rate
        if noisy and self.policy.rerun_safe and recorder.storable and self.body is not None:
            fresh = answer_content(recorder.body, recorder.headers)
            gate.background(experiments.noise(fresh, self.scope, self.body))

    def _computation(self) -> Computation:
        """This request's fresh computation (made once, when first needed)."""
        if self.computation is None:
            self.computation = Computation(
                self.app, self.gate, self.policy, self.scope, self.receive, self.started
            )
        return self.computation

    def _served_from_cache(self) -> None:
        self.counts.served_from_cache(self.policy.cost_per_call)


def _header_bytes(headers: Headers) -> int:
    """The size of a request's header block (a loop: a generator costs twice as much)."""
    size = 0
    for name, value in headers:
        size += len(name) + len(value)
    return size


def _response(entry: Entry) -> tuple[int, tuple[tuple[bytes, bytes], ...], bytes]:
    return entry.status, entry.headers, entry.body
