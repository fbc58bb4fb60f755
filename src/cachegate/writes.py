"""The write side: a write route's response is held until the store has taken the
invalidation of the cache scope it names, so once a client has seen its write succeed, no
answer computed before it is served."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from cachegate import tracing
from cachegate.body import read_body
from cachegate.extractors import Ambiguous, BadRequest, RequestView, field_at, scope_text
from cachegate.gate import CacheGate
from cachegate.keys import CacheScope
from cachegate.policy import Match, WriteRule
from cachegate.types import ASGIApp, Message, Receive, Scope, Send
from cachegate.vocabulary import BypassReason


class WriteResponder:
    """Handles one request to a write route: the response is held until the invalidation is done.

    So once a client has seen the write succeed, no answer computed before it is served. The
    scope is invalidated again when the route's ASGI call returns, after its background work.
    """

    def __init__(self, app: ASGIApp, gate: CacheGate, rule: WriteRule, match: Match) -> None:
        self.app = app
        self.gate = gate
        self.rule = rule
        self.match = match
        self.invalidated: dict[str, CacheScope] = {}
        """The cache scope of each tenant the write named, kept for the repeat after
        background work."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive, self.gate.limits.max_body_bytes)
        request = RequestView.of(scope, self.match.path_params, body.body)
        tenants = _write_tenants(self.rule.tenant, request)
        if not tenants:
            self.gate.metrics.bypasses.labels(BypassReason.NO_TENANT).inc()
            await self.app(scope, body.receive_again(receive), send)
            return
        subject = None
        if self.rule.subject is not None and body.complete and len(tenants) == 1:
            subject = _safe_text(self.rule.subject, request)

        async def release(held: HeldResponse) -> None:
            for tenant in tenants:
                await self._invalidate(tenant, subject, held)

        held = HeldResponse(send, self.gate.limits.max_entry_bytes, release)
        try:
            await self.app(scope, body.receive_again(receive), held)
        finally:
            await held.release()
            # The route's call returns after its background work (Starlette's BackgroundTasks
            # run after the response is sent): an answer computed from the data as it was
            # before that work finished may have been stored under the new generations.
            for tenant in tenants:
                await self._invalidate(tenant, subject, held, again=True)

    async def _invalidate(
        self, tenant: str, subject: str | None, held: HeldResponse, *, again: bool = False
    ) -> None:
        if 400 <= held.status < 500:
            return
        scope = self.invalidated.get(tenant)
        if scope is None:
            if subject is None and self.rule.response_subject is not None:
                subject = held.json_field(self.rule.response_subject)
            scope = self.invalidated[tenant] = CacheScope(tenant, subject)
        with tracing.tracer.start_as_current_span("cachegate.invalidate") as span:
            span.set_attributes(
                {tracing.ROUTE: self.rule.route, "cachegate.reason": self.rule.reason}
            )
            await self.gate.invalidator.invalidate(scope, self.rule.reason, counted=not again)


def _safe_text(extractor: Callable[[RequestView], object], request: RequestView) -> str | None:
    """The extracted tenant or subject; None when it cannot be read (the scope widens)."""
    try:
        return scope_text(extractor(request))
    except Exception:
        return None


def _write_tenants(
    extractor: Callable[[RequestView], object], request: RequestView
) -> tuple[str, ...]:
    """The tenants a write may have touched: its tenant, or every occurrence of an ambiguous one
    (the app picked one of them, the cache cannot know which); none when it cannot be read."""
    try:
        tenant = scope_text(extractor(request))
    except Ambiguous as ambiguous:
        return tuple(dict.fromkeys(value for value in ambiguous.values if value))
    except Exception:
        return ()
    return () if tenant is None else (tenant,)


class HeldResponse:
    """A `send` that holds the response until it is complete (or over `max_bytes`), then runs
    `on_release` (the invalidation) and only then lets the response go to the client."""

    def __init__(
        self,
        send: Send,
        max_bytes: int,
        on_release: Callable[[HeldResponse], Awaitable[None]],
    ) -> None:
        self._send = send
        self._max_bytes = max_bytes
        self._on_release = on_release
        self._messages: list[Message] = []
        self._size = 0
        self.status = 500
        self.complete = False
        self.released = False

    async def __call__(self, message: Message) -> None:
        if self.released:
            await self._send(message)
            return
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
        elif message["type"] == "http.response.body":
            self._size += len(message.get("body", b""))
            self.complete = not message.get("more_body", False)
        self._messages.append(message)
        if self.complete or self._size > self._max_bytes:
            await self.release()

    def json_field(self, path: str) -> str | None:
        """A field of the held body when it is complete JSON; None otherwise."""
        if not self.complete:
            return None
        chunks = [m.get("body", b"") for m in self._messages if m["type"] == "http.response.body"]
        try:
            value: object = json.loads(b"".join(chunks))
        except (ValueError, RecursionError):
            return None
        try:
            return scope_text(field_at(value, path.split(".")))
        except BadRequest:
            return None

    async def release(self) -> None:
        """Run `on_release` once, then send everything held; later messages pass straight on."""
        if self.released:
            return
        self.released = True
        await self._on_release(self)
        messages, self._messages = self._messages, []
        for message in messages:
            await self._send(message)
