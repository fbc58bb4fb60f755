"""The L1 result cache: keying a request, looking up its entry, and storing a fresh answer."""

from __future__ import annotations

from dataclasses import dataclass

from cachegate.keys import CacheScope, KeySpace, normalize_value
from cachegate.metrics import Metrics
from cachegate.policy import BadRequest, Extractor, Policy, RequestView, scope_text
from cachegate.store.base import MISSING_GENERATION, Store, StoreError
from cachegate.store.codec import (
    CorruptEntry,
    Entry,
    StreamEntry,
    decode_stored,
    encode_entry,
    encode_stream_entry,
)
from cachegate.vocabulary import BypassReason, Layer, UncacheableReason


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the cache knows of one request: its policy, scope, entry key and generations."""

    policy: Policy
    scope: CacheScope
    key: str
    generation_keys: tuple[str, ...]


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
        keyspace: KeySpace,
        *,
        metrics: Metrics,
        max_entry_bytes: int,
    ) -> None:
        self.store = store
        self.keyspace = keyspace
        self.metrics = metrics
        self.max_entry_bytes = max_entry_bytes

    def tenant(self, policy: Policy, request: RequestView) -> str | None:
        """The request's tenant, or None (it bypasses). `BadRequest` if it cannot be read."""
        return scope_text(_extract(policy.tenant, request))

    def facts(self, policy: Policy, request: RequestView, tenant: str) -> RequestFacts:
        """Key the request. `BadRequest` when its key material cannot be read."""
        subject = None
        if policy.subject is not None:
            subject = scope_text(_extract(policy.subject, request))
        scope = CacheScope(tenant, subject)
        try:
            material = {
                name: normalize_value(_extract(extractor, request), policy.normalization)
                for name, extractor in policy.key.items()
            }
            key = self.keyspace.entry_key(
                scope,
                route=policy.route,
                method=request.method,
                material=material,
                path_params=request.path_params,
            )
        except (TypeError, ValueError, RecursionError) as error:
            # deeply nested JSON parses, but normalising or encoding it can recurse too deep
            raise BadRequest(BypassReason.EXTRACTOR_ERROR) from error
        return RequestFacts(policy, scope, key, self.keyspace.generation_keys(scope))

    async def lookup(self, facts: RequestFacts) -> Found:
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


def _extract(extractor: Extractor, request: RequestView) -> object:
    """Call an extractor; anything but `BadRequest` it raises is an `extractor_error`."""
    try:
        return extractor(request)
    except BadRequest:
        raise
    except Exception as error:
        raise BadRequest(BypassReason.EXTRACTOR_ERROR) from error
