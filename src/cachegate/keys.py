"""Canonical key encoding: SHA-256 over length-prefixed parts, never `hash()` or `repr()`.

Every key of one tenant shares a Redis hash tag (`{t:...}`), so an entry and the generations it is
checked against live in one slot and are read in one round trip, on a single Redis or a Cluster.
Tenant ids and text never appear in keys: only digests do. Without a secret a digest can be
confirmed by anyone who guesses its input (a tenant id, a question); with one (`KeySpace.secret`)
every digest is an HMAC-SHA256 and reveals nothing to a reader of the store.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import struct
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Flag, auto
from functools import lru_cache
from typing import Any

from cachegate.renamed import renamed

KEY_SCHEMA_VERSION = 2
"""Bumped when the key encoding changes, so old entries can never be read as new ones."""

_WHITESPACE = re.compile(r"\s+")


class Normalization(Flag):
    """How text in key material is normalised before hashing (default: exact)."""

    EXACT = 0
    CASEFOLD = auto()
    COLLAPSE_WHITESPACE = auto()
    LOOSE = CASEFOLD | COLLAPSE_WHITESPACE
    """What the original `text.lower().strip()` approximated, made Unicode-correct."""


def normalize_text(text: str, normalization: Normalization) -> str:
    """Apply `normalization` to one text value."""
    if normalization & Normalization.COLLAPSE_WHITESPACE:
        text = _WHITESPACE.sub(" ", text).strip()
    if normalization & Normalization.CASEFOLD:
        text = unicodedata.normalize("NFKC", text).casefold()
    return text


def normalize_value(value: object, normalization: Normalization) -> object:
    """Normalise every string inside a JSON-like value; other values are kept as they are."""
    if normalization is Normalization.EXACT:
        return value
    if isinstance(value, str):
        return normalize_text(value, normalization)
    if isinstance(value, list | tuple):
        return [normalize_value(item, normalization) for item in value]
    if isinstance(value, Mapping):
        return {key: normalize_value(item, normalization) for key, item in value.items()}
    return value


_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)
"""One encoder for every key: `json.dumps` with these options would build one per call."""

_MAKE_ENCODER: Any = getattr(json.encoder, "c_make_encoder", None)  # None without CPython's _json
_C_ENCODE = (
    None
    if _MAKE_ENCODER is None
    else _MAKE_ENCODER(
        None,  # no circular check: a cycle ends in RecursionError, as deep nesting does
        _CANONICAL.default,
        json.encoder.encode_basestring,
        None,
        ":",
        ",",
        True,
        False,
        False,
    )
)
"""`_CANONICAL`'s C encoder, made once: `encode` makes one per call, half of keying's JSON cost.
The same function `_CANONICAL.iterencode` calls, so the bytes are the same (the pinned keys)."""


def canonical_json(value: object) -> bytes:
    """Deterministic JSON bytes of a JSON-like value (sorted keys, no spaces, no NaN)."""
    if not value and isinstance(value, dict):
        return b"{}"
    if _C_ENCODE is None:
        return _CANONICAL.encode(value).encode("utf-8", "surrogatepass")
    return "".join(_C_ENCODE(value, 0)).encode("utf-8", "surrogatepass")


MIN_SECRET_BYTES = 16


def encode_text(text: str) -> bytes:
    """`encode_parts((text,))` for one text, without the loop (a key per text of a batch)."""
    data = text.encode("utf-8", "surrogatepass")
    return _LENGTH(len(data)) + data


def encode_parts(parts: Iterable[bytes | str]) -> bytes:
    """Length-prefixed parts, so no two part lists encode alike.

    Text is UTF-8 with lone surrogates passed through (JSON may carry them as `\\ud800`), so
    every `str` has exactly one encoding and keying never fails on one.
    """
    chunks: list[bytes] = []
    for part in parts:
        data = part.encode("utf-8", "surrogatepass") if isinstance(part, str) else part
        chunks += (_LENGTH(len(data)), data)
    return b"".join(chunks)


_LENGTH = struct.Struct(">Q").pack


@lru_cache(maxsize=1024)
def _route_parts(version: str, namespace: str, route: str, method: str) -> bytes:
    """The encoded parts every entry key of a route and method starts with."""
    return encode_parts((version, namespace, route, method.upper()))


def digest(parts: Iterable[bytes | str], secret: bytes | None = None) -> str:
    """Hex SHA-256 (HMAC-SHA256 with `secret`) over length-prefixed parts."""
    data = encode_parts(parts)
    if secret is None:
        return hashlib.sha256(data).hexdigest()
    return hmac.new(secret, data, "sha256").hexdigest()


@lru_cache(maxsize=4096)
def _tenant_prefix(namespace: str, secret: bytes | None, tenant: str) -> str:
    """`namespace:{t:<tag>}`; cached, as a request needs it for its entry and generations."""
    return f"{namespace}:{{t:{digest(('tenant', namespace, tenant), secret)[:24]}}}"


@lru_cache(maxsize=16_384)
def _subject_tag(secret: bytes | None, subject: str) -> str:
    return digest(("subject", subject), secret)[:32]


@dataclass(frozen=True, slots=True)
class CacheScope:
    """Who an entry belongs to: a tenant (workspace) and optionally a subject (client)."""

    tenant: str
    subject: str | None = None


@dataclass(frozen=True, slots=True)
class KeySpace:
    """Builds the store keys of one namespace (one cache, one key-schema version).

    With a `secret` (at least 16 bytes, the same in every process of the service) every digest
    is keyed; changing it makes every existing entry and generation unreachable (misses).
    """

    namespace: str = "cachegate"
    secret: bytes | None = field(default=None, repr=False)
    _mac: hmac.HMAC | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.namespace or any(c in self.namespace for c in "{}: \n"):
            raise ValueError(
                f"namespace must be non-empty without braces, colons or spaces: {self.namespace!r}"
            )
        if self.secret is not None:
            if not isinstance(self.secret, bytes) or len(self.secret) < MIN_SECRET_BYTES:
                raise ValueError(f"the key secret must be at least {MIN_SECRET_BYTES} bytes")
            object.__setattr__(self, "_mac", hmac.new(self.secret, digestmod="sha256"))

    def digest_bytes(self, data: bytes) -> str:
        """The hex digest of already encoded parts (keyed when this key space has a secret)."""
        if self._mac is None:
            return hashlib.sha256(data).hexdigest()
        mac = self._mac.copy()
        mac.update(data)
        return mac.hexdigest()

    def tenant_tag(self, tenant: str) -> str:
        """The hash tag shared by all keys of a tenant (a digest, never the id)."""
        return digest(("tenant", self.namespace, tenant), self.secret)[:24]

    def _prefix(self, tenant: str) -> str:
        return _tenant_prefix(self.namespace, self.secret, tenant)

    def entry_key(
        self,
        scope: CacheScope,
        *,
        route: str,
        method: str,
        material: Mapping[str, object],
        path_params: Mapping[str, str] | None = None,
    ) -> str:
        """The L1 entry key for one request's scope, path parameters and key material."""
        parts = (
            scope.tenant,
            "" if scope.subject is None else "s:" + scope.subject,
            canonical_json(dict(path_params or {})),
            canonical_json(dict(material)),
        )
        data = _route_parts(str(KEY_SCHEMA_VERSION), self.namespace, route, method)
        return f"{self._prefix(scope.tenant)}:r:{self.digest_bytes(data + encode_parts(parts))}"

    def generation_keys(self, scope: CacheScope) -> tuple[str, str]:
        """The two generations an entry of `scope` is checked against.

        An entry with a subject depends on its tenant's and its subject's generation. An entry
        without one may draw on any subject's data, so it depends on the tenant's generation and
        on the tenant's "any subject" generation, which every subject invalidation also advances.
        """
        prefix = self._prefix(scope.tenant)
        if scope.subject is None:
            return (f"{prefix}:g:t", f"{prefix}:g:a")
        return (f"{prefix}:g:t", f"{prefix}:g:s:{_subject_tag(self.secret, scope.subject)}")

    def invalidation_keys(self, scope: CacheScope) -> tuple[str, ...]:
        """The generations an invalidation of `scope` advances."""
        prefix = self._prefix(scope.tenant)
        if scope.subject is None:
            return (f"{prefix}:g:t",)
        return (self.generation_keys(scope)[1], f"{prefix}:g:a")


_ASGI = "'scope' means the ASGI scope"
__getattr__ = renamed(
    "cachegate.keys",
    {"Scope": f"cachegate.keys.CacheScope (the tenant and subject of an entry); {_ASGI}"},
)
