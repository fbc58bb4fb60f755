"""Invalidation: advance a scope's generations, so none of its entries is served again.

An invalidation the store did not acknowledge is kept pending: this process bypasses the cache
for that scope and retries in the background until the store takes it, and once more when the
process shuts down; what is still pending then is lost, counted and logged. Other processes
cannot know about a pending invalidation: until it lands they may serve the scope's old entries
(bounded by the retry, or by the entries' TTL if it never lands), which is what
`cachegate_invalidations_pending` and its alert show.

A store that refuses the write (a full Redis under `noeviction`, a read-only replica) is not
slow but unwilling: every process notices it within its store's write-probe interval and then
serves no hits, so the write's response is held `refusal_hold` seconds, past that interval,
before the client sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging

from cachegate.keys import CacheScope, KeySpace
from cachegate.metrics import Metrics
from cachegate.store.base import Store, StoreWritesRefused

logger = logging.getLogger("cachegate.invalidation")

MAX_PENDING_SUBJECTS = 100
"""Above this many pending subjects in one tenant, the whole tenant is kept pending instead."""


class Invalidator:
    """Bumps generations and keeps failed invalidations pending until they succeed."""

    def __init__(
        self,
        store: Store,
        keyspace: KeySpace,
        *,
        metrics: Metrics | None = None,
        retry_interval: float = 0.5,
        refusal_hold: float = 1.5,
    ) -> None:
        self.store = store
        self.keyspace = keyspace
        self.metrics = metrics
        self.retry_interval = retry_interval
        self.refusal_hold = refusal_hold
        self._pending: dict[str, dict[str | None, int]] = {}
        self._sequence = itertools.count(1)
        self._retrying: asyncio.Task[None] | None = None

    async def invalidate(
        self, scope: CacheScope, reason: str = "api", *, counted: bool = True
    ) -> bool:
        """Invalidate every entry of `scope`; False if the store did not take it (kept pending).

        Never raises: a write that succeeded must reach its client whatever the store does.
        `counted=False` for a repeat of an invalidation already counted (after a write route's
        background work).
        """
        try:
            await self.store.bump(self.keyspace.invalidation_keys(scope))
        except Exception as error:
            self._keep_pending(scope)
            if self.metrics is not None:
                self.metrics.invalidation_failures.inc()
            logger.warning("invalidation not acknowledged by the store; kept pending")
            if isinstance(error, StoreWritesRefused):
                await asyncio.sleep(self.refusal_hold)
            return False
        if counted and self.metrics is not None:
            self.metrics.invalidations.labels(reason).inc()
        return True

    def is_pending(self, scope: CacheScope) -> bool:
        """Whether entries of `scope` may be stale because an invalidation is still pending."""
        if not self._pending:
            return False
        subjects = self._pending.get(scope.tenant)
        if subjects is None:
            return False
        return scope.subject is None or None in subjects or scope.subject in subjects

    @property
    def pending_count(self) -> int:
        """Scopes whose invalidation is still pending."""
        return sum(len(subjects) for subjects in self._pending.values())

    def _keep_pending(self, scope: CacheScope) -> None:
        """Mark `scope` pending under a new sequence number, so a retry that was already in
        flight before this failure cannot clear it."""
        subjects = self._pending.setdefault(scope.tenant, {})
        subjects[scope.subject] = next(self._sequence)
        if len(subjects) > MAX_PENDING_SUBJECTS:
            subjects.clear()
            subjects[None] = next(self._sequence)
        self._count_pending()
        if self._retrying is None or self._retrying.done():
            self._retrying = asyncio.get_running_loop().create_task(self._retry())

    def _count_pending(self) -> None:
        if self.metrics is not None:
            self.metrics.invalidations_pending.set(self.pending_count)

    async def _retry(self) -> None:
        while self._pending:
            await asyncio.sleep(self.retry_interval)
            try:
                await self._retry_once()
            except Exception:
                continue

    async def _retry_once(self) -> None:
        """Bump every pending scope once, in order; the first failure stops the round."""
        try:
            for tenant, subjects in list(self._pending.items()):
                for subject, sequence in list(subjects.items()):
                    await self.store.bump(
                        self.keyspace.invalidation_keys(CacheScope(tenant, subject))
                    )
                    if subjects.get(subject) == sequence:
                        del subjects[subject]
                if not subjects and self._pending.get(tenant) is subjects:
                    del self._pending[tenant]
        finally:
            self._count_pending()

    async def flush(self) -> int:
        """Stop retrying in the background and try every pending invalidation once more now
        (at shutdown); those the store still does not take are lost: counted, logged and
        returned. Never raises."""
        if self._retrying is not None:
            self._retrying.cancel()
            self._retrying = None
        if self._pending:
            with contextlib.suppress(Exception):
                await self._retry_once()
        lost = self.pending_count
        if lost:
            logger.error(
                "%d pending invalidation(s) lost at shutdown: other processes may serve "
                "those scopes' old entries until their TTL",
                lost,
            )
            if self.metrics is not None:
                self.metrics.invalidations_lost.inc(lost)
            self._pending.clear()
            self._count_pending()
        return lost

    async def aclose(self) -> None:
        """Try pending invalidations once more, then stop (see `flush`)."""
        await self.flush()
