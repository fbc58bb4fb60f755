"""`EncryptedStore`: AES-GCM encryption at rest around any `Store` (the `cachegate[crypto]` extra).

Values (L1 entries, L2 vectors) are encrypted under the active key on the way in and decrypted
on the way out; generations are counters, not data, and pass through untouched. Keys are named
by id so they can be rotated: a value written under a key that is still configured is read,
one under a retired or unknown key id, or one that fails authentication, is a miss (counted in
the `encrypted_values_rejected` series of its metrics and in `rejected`, and reported to
`on_reject`).

Layout of a stored value::

    version (1 byte, 1) | key-id length (1) | key id (ASCII) | nonce (12) | ciphertext + tag (16)

The associated data is the header (version, key-id length, key id) followed by the UTF-8 store
key, so a value copied under another key, or relabelled with another key id, fails
authentication. Nonces are random (96 bits): rotate the active key well before 2**32 writes
under it (NIST SP 800-38D).

Importing this module imports `cryptography`; `import cachegate` never does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "EncryptedStore needs the 'cryptography' package: pip install 'cachegate[crypto]'"
    ) from error

from cachegate.keys import MIN_SECRET_BYTES
from cachegate.metrics import Metrics
from cachegate.store.base import Lookup, Store, metrics_of

__all__ = ["FORMAT_VERSION", "NONCE_BYTES", "OVERHEAD", "EncryptedStore", "RejectReason"]

FORMAT_VERSION = 1
NONCE_BYTES = 12
TAG_BYTES = 16
OVERHEAD = 2 + NONCE_BYTES + TAG_BYTES
"""Bytes added to a value, plus the length of the key id."""
KEY_SIZES = (16, 24, 32)
_VERSION = bytes((FORMAT_VERSION,))

RejectReason = Literal["unknown_key", "invalid"]
"""Why a stored value was read as a miss: its key id is not configured (retired, or another
deployment's), or it is malformed, tampered with, or stored under another store key."""


class EncryptedStore:
    """A `Store` that encrypts values with AES-GCM under `keys[active]`.

    `keys` maps key ids (1-255 ASCII characters) to 16, 24 or 32-byte AES keys; all of them can
    be read, only `active` is written. `digest_secret` (at least 16 bytes) keys the digests in
    every store key the cache makes (HMAC), so the keys reveal nothing either; it is not rotated
    with `keys`, as every process of the service must find the same entries and generations.
    Every value read as a miss because it could not be decrypted is counted in `metrics`
    (`encrypted_values_rejected_total{reason}`; by default the wrapped store's metrics, else
    `default_metrics()`; metrics other than the wrapped store's are a `ValueError`) and in
    `rejected`, and passed to `on_reject(reason)` if given.
    """

    def __init__(
        self,
        store: Store,
        keys: Mapping[str, bytes],
        active: str,
        *,
        digest_secret: bytes | None = None,
        on_reject: Callable[[RejectReason], None] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        if not keys:
            raise ValueError("EncryptedStore needs at least one key")
        if digest_secret is None or len(digest_secret) < MIN_SECRET_BYTES:
            raise ValueError(
                "EncryptedStore needs digest_secret= (bytes, at least 16, the same in every "
                "process and kept across key rotations): store keys are HMACs under it, since "
                "plain digests of tenant ids and questions can be confirmed by guessing"
            )
        self.digest_secret = digest_secret
        self.inner = store
        self.metrics = metrics_of(store, metrics)
        self._ciphers: dict[bytes, AESGCM] = {}
        for key_id, key in keys.items():
            self._ciphers[_key_id_bytes(key_id)] = AESGCM(_checked_key(key_id, key))
        if active not in keys:
            raise ValueError(f"active key id {active!r} is not one of the configured keys")
        active_id = _key_id_bytes(active)
        self.active = active
        self._cipher = self._ciphers[active_id]
        self._header = bytes((FORMAT_VERSION, len(active_id))) + active_id
        self.on_reject = on_reject
        self.rejected: dict[RejectReason, int] = {"unknown_key": 0, "invalid": 0}
        self._rejections = {
            reason: self.metrics.encrypted_rejected.labels(reason) for reason in self.rejected
        }

    def encrypt(self, key: str, value: bytes) -> bytes:
        """The stored form of `value` under store key `key` (active key, fresh nonce)."""
        nonce = os.urandom(NONCE_BYTES)
        aad = self._header + key.encode("utf-8", "surrogatepass")
        return self._header + nonce + self._cipher.encrypt(nonce, value, aad)

    def decrypt(self, key: str, data: bytes) -> bytes | None:
        """The plain value of `data` read under store key `key`, or None (counted) if it cannot
        be authenticated under a configured key."""
        id_length = data[1] if len(data) >= 2 else 0
        start = 2 + id_length
        if data[:1] != _VERSION or id_length == 0 or len(data) < start + NONCE_BYTES + TAG_BYTES:
            self._reject("invalid")
            return None
        cipher = self._ciphers.get(data[2:start])
        if cipher is None:
            self._reject("unknown_key")
            return None
        aad = data[:start] + key.encode("utf-8", "surrogatepass")
        try:
            return cipher.decrypt(
                data[start : start + NONCE_BYTES], data[start + NONCE_BYTES :], aad
            )
        except InvalidTag:
            self._reject("invalid")
            return None

    def _reject(self, reason: RejectReason) -> None:
        self.rejected[reason] += 1
        self._rejections[reason].inc()
        if self.on_reject is not None:
            self.on_reject(reason)

    async def lookup(self, key: str, generation_keys: Sequence[str]) -> Lookup:
        """The inner lookup, its value decrypted (None if it cannot be)."""
        found = await self.inner.lookup(key, generation_keys)
        if found.value is None:
            return found
        return Lookup(self.decrypt(key, found.value), found.generations, found.epoch)

    async def generations(self, generation_keys: Sequence[str]) -> tuple[int, ...]:
        """Passed through: generations are counters, not data."""
        return await self.inner.generations(generation_keys)

    async def write(self, key: str, value: bytes, ttl: float) -> None:
        """Encrypt under the active key, then write."""
        await self.inner.write(key, self.encrypt(key, value), ttl)

    async def delete(self, key: str) -> None:
        """Passed through."""
        await self.inner.delete(key)

    async def bump(self, generation_keys: Sequence[str]) -> None:
        """Passed through."""
        await self.inner.bump(generation_keys)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The inner read, each value decrypted under its own key (None if it cannot be)."""
        values = await self.inner.get_many(keys)
        return [
            None if value is None else self.decrypt(key, value)
            for key, value in zip(keys, values, strict=True)
        ]

    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl: float) -> None:
        """Encrypt each value under its key, then write them all."""
        await self.inner.set_many([(key, self.encrypt(key, value)) for key, value in items], ttl)

    async def aclose(self) -> None:
        """Close the inner store."""
        await self.inner.aclose()


def _key_id_bytes(key_id: str) -> bytes:
    if not isinstance(key_id, str) or not key_id:
        raise ValueError(f"key ids must be non-empty strings, not {key_id!r}")
    try:
        encoded = key_id.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"key id {key_id!r} must be ASCII") from None
    if len(encoded) > 255:
        raise ValueError(f"key id {key_id[:20]!r}... is longer than 255 characters")
    return encoded


def _checked_key(key_id: str, key: bytes) -> bytes:
    if not isinstance(key, bytes | bytearray):
        raise TypeError(
            f"key {key_id!r} must be bytes (e.g. base64.b64decode(...)), not {type(key).__name__}"
        )
    if len(key) not in KEY_SIZES:
        raise ValueError(
            f"key {key_id!r} is {len(key)} bytes; AES-GCM keys are 16, 24 or 32 bytes "
            "(generate one with AESGCM.generate_key(bit_length=256))"
        )
    return bytes(key)
