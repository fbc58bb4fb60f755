"""A reference model of invalidation, for the property tests to check the cache against."""

from __future__ import annotations


class Model:
    """Which invalidations each scope has seen: a tuple that changes whenever one applies."""

    def __init__(self) -> None:
        self.tenant: dict[str, int] = {}
        self.subject: dict[tuple[str, str], int] = {}
        self.any_subject: dict[str, int] = {}

    def version(self, tenant: str, subject: str | None) -> tuple[int, int]:
        if subject is None:
            return (self.tenant.get(tenant, 0), self.any_subject.get(tenant, 0))
        return (self.tenant.get(tenant, 0), self.subject.get((tenant, subject), 0))

    def invalidate(self, tenant: str, subject: str | None) -> None:
        if subject is None:
            self.tenant[tenant] = self.tenant.get(tenant, 0) + 1
        else:
            self.subject[(tenant, subject)] = self.subject.get((tenant, subject), 0) + 1
            self.any_subject[tenant] = self.any_subject.get(tenant, 0) + 1
