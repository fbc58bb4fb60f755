"""Keying: how a request maps, under its policy, to a cache scope and the store keys of its
entry and generations. The middleware and `CacheGate.keys_for` use the same code."""

from __future__ import annotations

from dataclasses import dataclass

from cachegate.extractors import BadRequest, Extractor, RequestView, scope_text
from cachegate.keys import CacheScope, KeySpace, normalize_value
from cachegate.policy import Policy
from cachegate.vocabulary import BypassReason


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the cache knows of one request: its policy, scope, entry key and generations."""

    policy: Policy
    scope: CacheScope
    key: str
    generation_keys: tuple[str, ...]


class Keying:
    """Reads a request's tenant, subject and key material under a policy and names its keys."""

    def __init__(self, keyspace: KeySpace) -> None:
        self.keyspace = keyspace

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

    def request(self, policy: Policy, request: RequestView) -> RequestFacts:
        """Key a request whose tenant is still to be read; `BadRequest` (with the bypass
        reason, `no_tenant` included) when it would bypass for what it says."""
        tenant = self.tenant(policy, request)
        if tenant is None:
            raise BadRequest(BypassReason.NO_TENANT)
        return self.facts(policy, request, tenant)


def _extract(extractor: Extractor, request: RequestView) -> object:
    """Call an extractor; anything but `BadRequest` it raises is an `extractor_error`."""
    try:
        return extractor(request)
    except BadRequest:
        raise
    except Exception as error:
        raise BadRequest(BypassReason.EXTRACTOR_ERROR) from error
