"""Invalidation: advance a scope's generations, so none of its entries is served again.

An invalidation the store did not acknowledge is kept pending: this process bypasses the cache
for that scope and retries in the background until the store takes it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging

from cachegate.keys import KeySpace, Scope
from cachegate.metrics import Metrics
from cachegate.store.base import Store

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
    ) -> None:
        self.store = store
        self.keyspace = keyspace
        self.metrics = metrics
        self.retry_interval = retry_interval
        self._pending: dict[str, dict[str | None, int]] = {}
        self._sequence = itertools.count(1)
        self._retrying: asyncio.Task[None] | None = None

    async def invalidate(self, scope: Scope, reason: str = "api") -> bool:
        """Invalidate every entry of `scope`; False if the store did not take it (kept pending).

        Never raises: a write that succeeded must reach its client whatever the store does.
        """
        try:
            await self.store.bump(self.keyspace.invalidation_keys(scope))
        except Exception:
            self._keep_pending(scope)
            if self.metrics is not None:
                self.metrics.invalidation_failures.inc()
            logger.warning("invalidation not acknowledged by the store; kept pending")
            return False
        if self.metrics is not None:
            self.metrics.invalidations.labels(reason).inc()
        return True

    def is_pending(self, scope: Scope) -> bool:
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

    def _keep_pending(self, scope: Scope) -> None:
        """Mark `scope` pending under a new sequence number, so a retry that was already in
        flight before this failure cannot clear it."""
        subjects = self._pending.setdefault(scope.tenant, {})
        subjects[scope.subject] = next(self._sequence)
        if len(subjects) > MAX_PENDING_SUBJECTS:
            subjects.clear()
            subjects[None] = next(self._sequence)
        if self._retrying is None or self._retrying.done():
            self._retrying = asyncio.get_running_loop().create_task(self._retry())

    async def _retry(self) -> None:
        while self._pending:
            await asyncio.sleep(self.retry_interval)
            try:
                for tenant, subjects in list(self._pending.items()):
                    for subject, sequence in list(subjects.items()):
                        await self.store.bump(
                            self.keyspace.invalidation_keys(Scope(tenant, subject))
                        )
                        if subjects.get(subject) == sequence:
                            del subjects[subject]
                    if not subjects and self._pending.get(tenant) is subjects:
                        del self._pending[tenant]
            except Exception:
                continue

    async def aclose(self) -> None:
        """Stop retrying (pending invalidations are lost with the process, as its cache is)."""
        if self._retrying is not None:
            self._retrying.cancel()
            self._retrying = None
