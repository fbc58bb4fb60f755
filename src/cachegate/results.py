"""The L1 result cache: looking up a request's entry, and storing a fresh answer under the
generations read before it was computed."""

from __future__ import annotations

from dataclasses import dataclass

from cachegate import tracing
from cachegate.keying import RequestFacts
from cachegate.metrics import Metrics
from cachegate.responses import ResponseRecorder, storable_headers
from cachegate.rollout import Mode
from cachegate.store.base import MISSING_GENERATION, Store, StoreError
from cachegate.store.codec import (
    CorruptEntry,
    Entry,
    StreamEntry,
    decode_stored,
    encode_entry,
    encode_stream_entry,
)
from cachegate.vocabulary import Layer, UncacheableReason


@dataclass(frozen=True, slots=True)
class Found:
    """A lookup's result: a servable entry or None, and the generations read followed by the
    store's epoch (None on error).

    `chunks` are a streamed entry's (offset in microseconds, length) pairs; empty otherwise.
    """

    entry: Entry | None
    generations: tuple[int, ...] | None
    chunks: tuple[tuple[int, int], ...] = ()


class ResultCache:
    """Entries of whole responses in a store, checked against their scope's generations."""

    def __init__(
        self,
        store: Store,
        *,
        metrics: Metrics,
        max_entry_bytes: int,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.max_entry_bytes = max_entry_bytes

    async def lookup(self, facts: RequestFacts, mode: Mode) -> Found:
        """`find` in a `cachegate.lookup` span (the request's `mode`, its outcome)."""
        if not tracing.configured():
            return await self.find(facts)
        span = tracing.tracer.start_span("cachegate.lookup")
        try:
            found = await self.find(facts)
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

    async def find(self, facts: RequestFacts) -> Found:
        """One round trip: the entry if it exists, decodes and is as new as its generations.

        The generations an entry records end with the store's epoch, so an entry written
        before the store's state went back in time (a restart from a snapshot, a promoted
        replica) never matches again.
        """
        try:
            found = await self.store.lookup(facts.key, facts.generation_keys)
        except StoreError:
            return Found(None, None)
        current = (*found.generations, found.epoch)
        if found.value is None:
            return Found(None, current)
        try:
            stored = decode_stored(found.value)
        except CorruptEntry:
            self.metrics.corrupt_entries.labels(Layer.RESULT).inc()
            await self._delete(facts.key)
            return Found(None, current)
        entry, chunks = (
            (stored.entry, stored.chunks) if isinstance(stored, StreamEntry) else (stored, ())
        )
        if MISSING_GENERATION in found.generations or entry.generations != current:
            return Found(None, current)
        return Found(entry, current, chunks)

    async def start_generations(self, found: Found, facts: RequestFacts) -> tuple[int, ...] | None:
        """The generations a fresh computation starting now is stored under (None: not stored).

        Missing generations are created before the computation starts, never after it: an
        invalidation during the computation must move them past what the entry records.
        """
        if found.generations is None:
            return None
        *generations, epoch = found.generations
        if MISSING_GENERATION not in generations:
            return found.generations
        try:
            return (*await self.store.generations(facts.generation_keys), epoch)
        except StoreError:
            return None

    async def store_answer(
        self, facts: RequestFacts, generations: tuple[int, ...], recorder: ResponseRecorder
    ) -> Entry | None:
        """Store a recorded fresh answer if it may be stored (else count why it is not), in a
        `cachegate.store_write` span; the entry, or None when nothing was stored."""
        if not recorder.storable:
            self.metrics.uncacheable.labels(recorder.reason or UncacheableReason.ERROR).inc()
            return None
        with tracing.tracer.start_as_current_span("cachegate.store_write") as span:
            span.set_attributes({tracing.LAYER: Layer.RESULT, tracing.ROUTE: facts.policy.route})
            return await self.fill(
                facts,
                generations,
                status=recorder.status,
                headers=storable_headers(recorder.headers),
                body=recorder.body,
                chunks=recorder.chunks,
            )

    async def fill(
        self,
        facts: RequestFacts,
        generations: tuple[int, ...],
        *,
        status: int,
        headers: tuple[tuple[bytes, bytes], ...],
        body: bytes,
        chunks: tuple[tuple[int, int], ...] = (),
    ) -> Entry | None:
        """Store a fresh response under the generations read before it was computed; with
        `chunks`, as a streamed entry that is sent in those chunks."""
        entry = Entry(status, headers, body, generations)
        data = encode_stream_entry(StreamEntry(entry, chunks)) if chunks else encode_entry(entry)
        if len(data) > self.max_entry_bytes:
            self.metrics.uncacheable.labels(
                UncacheableReason.STREAM_TOO_LARGE if chunks else UncacheableReason.TOO_LARGE
            ).inc()
            return None
        self.metrics.entry_size.labels(Layer.RESULT).observe(len(data))
        try:
            await self.store.write(facts.key, data, facts.policy.ttl)
        except StoreError:
            return entry
        return entry

    async def changed_since(self, facts: RequestFacts, generations: tuple[int, ...]) -> bool:
        """Whether the scope was invalidated since `generations` were read (False if unknown)."""
        try:
            found = await self.store.lookup(facts.key, facts.generation_keys)
        except StoreError:
            return False
        return (*found.generations, found.epoch) != generations

    async def drop(self, facts: RequestFacts) -> None:
        """Delete a request's entry (a verified-stale one); store errors are ignored."""
        await self._delete(facts.key)

    async def _delete(self, key: str) -> None:
        try:
            await self.store.delete(key)
        except StoreError:
            return
