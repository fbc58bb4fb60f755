"""Keying: how a request maps, under its policy, to a cache scope and the store keys of its
entry and generations. The middleware and `CacheGate.keys_for` use the same code."""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass

from cachegate.extractors import (
    BadRequest,
    Extractor,
    Reads,
    RequestView,
    request_reads,
    scope_text,
)
from cachegate.keys import CacheScope, KeySpace, normalize_value
from cachegate.policy import Policy
from cachegate.vocabulary import BypassReason

MEMO_ENTRIES = 1024
"""Requests' facts remembered per policy (the oldest is forgotten first)."""
MEMO_MAX_CHARS = 2048
"""A request whose remembered inputs are longer than this is keyed afresh, never kept."""


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the cache knows of one request: its policy, scope, entry key and generations."""

    policy: Policy
    scope: CacheScope
    key: str
    generation_keys: tuple[str, ...]


class Keying:
    """Reads a request's tenant, subject and key material under a policy and names its keys.

    Facts are a pure function of what the policy's extractors read. When every subject and key
    extractor is a helper that reads only the query string, headers, path parameters or body
    (`request_reads`), the facts of a request are remembered under exactly those inputs, its
    method and its tenant: a repeated question (a hit) is not parsed, normalised and hashed
    again. Any other extractor is called for every request.
    """

    def __init__(self, keyspace: KeySpace) -> None:
        self.keyspace = keyspace
        self._memos: dict[int, _Memo] = {}

    def tenant(self, policy: Policy, request: RequestView) -> str | None:
        """The request's tenant, or None (it bypasses). `BadRequest` if it cannot be read."""
        return scope_text(_extract(policy.tenant, request))

    def facts(self, policy: Policy, request: RequestView, tenant: str) -> RequestFacts:
        """Key the request. `BadRequest` when its key material cannot be read."""
        memo = self._memos.get(id(policy))
        if memo is None or memo.policy is not policy:
            memo = self._memos[id(policy)] = _Memo(policy)
        inputs = memo.inputs(request, tenant)
        if inputs is None:
            return self._facts(policy, request, tenant)
        try:
            facts = memo.known.get(inputs)
        except TypeError:  # an unhashable input (a header value not bytes): keyed afresh
            return self._facts(policy, request, tenant)
        if facts is None:
            facts = self._facts(policy, request, tenant)
            memo.keep(inputs, facts)
        return facts

    def request(self, policy: Policy, request: RequestView) -> RequestFacts:
        """Key a request whose tenant is still to be read; `BadRequest` (with the bypass
        reason, `no_tenant` included) when it would bypass for what it says."""
        tenant = self.tenant(policy, request)
        if tenant is None:
            raise BadRequest(BypassReason.NO_TENANT)
        return self.facts(policy, request, tenant)

    def _facts(self, policy: Policy, request: RequestView, tenant: str) -> RequestFacts:
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


class _Memo:
    """One policy's remembered facts, by the request inputs its extractors read."""

    __slots__ = ("known", "policy", "reads")

    def __init__(self, policy: Policy) -> None:
        self.policy = policy  # held, so its id is not reused while remembered
        self.reads = _policy_reads(policy)
        self.known: dict[tuple[object, ...], RequestFacts] = {}

    def inputs(self, request: RequestView, tenant: str) -> tuple[object, ...] | None:
        """Everything the facts depend on, or None when they are not to be remembered: a
        header read is kept with every occurrence, so a repeated header is never mistaken
        for a single one."""
        reads = self.reads
        if reads is None:
            return None
        path_params = tuple(request.path_params.items())
        query = request.query_string if reads.query else b""
        body = request.body if reads.body else b""
        if type(body) is not bytes:  # a view or buffer: not kept (it may change)
            return None
        size = len(tenant) + len(query) + len(body)
        headers: tuple[tuple[bytes, ...], ...] = ()
        if reads.headers:
            headers = tuple(
                tuple(value for name, value in request.headers if name == wanted)
                for wanted in reads.headers
            )
            size += sum(len(value) for values in headers for value in values)
        if path_params:
            size += sum(len(name) + len(value) for name, value in path_params)
        if size > MEMO_MAX_CHARS:
            return None
        return (request.method, tenant, query, body, path_params, headers)

    def keep(self, inputs: tuple[object, ...], facts: RequestFacts) -> None:
        """Remember `facts`, forgetting the oldest past `MEMO_ENTRIES`."""
        known = self.known
        if len(known) >= MEMO_ENTRIES:
            with suppress(KeyError, RuntimeError, StopIteration):  # another thread was first
                del known[next(iter(known))]
        known[inputs] = facts


def _policy_reads(policy: Policy) -> Reads | None:
    """What a policy's subject and key extractors read together, or None if any may read
    more than `request_reads` can say."""
    reads = Reads()
    for extractor in policy.scope_extractors():
        read = request_reads(extractor)
        if read is None:
            return None
        reads |= read
    return reads


def _extract(extractor: Extractor, request: RequestView) -> object:
    """Call an extractor; anything but `BadRequest` it raises is an `extractor_error`."""
    try:
        return extractor(request)
    except BadRequest:
        raise
    except Exception as error:
        raise BadRequest(BypassReason.EXTRACTOR_ERROR) from error
