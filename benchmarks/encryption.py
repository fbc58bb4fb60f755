"""Encryption at rest: the in-process hit path with and without `EncryptedStore` (AES-GCM).

The same app and raw ASGI driver as the L1 in-process group (`l1.Driver`, the ~1 KiB answer),
one request at a time, variants interleaved: a hit on `MemoryStore` and on `RedisStore`, each
plain and wrapped in `EncryptedStore` with a 256-bit key. Also the cipher alone: encrypting and
decrypting one stored entry of that size.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from benchmarks import apps
from benchmarks.harness import Samples, time_sync
from benchmarks.tables import table, us

if TYPE_CHECKING:
    from cachegate.store import Store

KEY = bytes(range(32))


@dataclass
class EncryptionResult:
    hit: dict[str, Samples] = field(default_factory=dict)
    cipher: dict[str, Samples] = field(default_factory=dict)
    entry_bytes: int = 0
    note: str = ""
    """Why the group did not run (empty when it did)."""


async def _hit_path(redis_url: str, namespace: str, quick: bool) -> dict[str, Samples]:
    from benchmarks.l1 import time_apps
    from cachegate.store import MemoryStore
    from cachegate.store.encrypted import EncryptedStore

    def encrypted(store: Store) -> EncryptedStore:
        return EncryptedStore(store, {"k1": KEY}, "k1", digest_secret=b"d" * 32)

    def build() -> dict[str, apps.Built]:
        stores: dict[str, Store] = {
            "hit, MemoryStore": MemoryStore(),
            "hit, MemoryStore + EncryptedStore": encrypted(MemoryStore()),
            "hit, RedisStore": apps.redis_store(redis_url),
            "hit, RedisStore + EncryptedStore": encrypted(apps.redis_store(redis_url)),
        }
        return {
            name: apps.gated(apps.post_policy(), store, f"{namespace}enc{i}")
            for i, (name, store) in enumerate(stores.items())
        }

    return await time_apps(build, quick=quick, expect="hit_memory")


def _cipher(quick: bool) -> tuple[dict[str, Samples], int]:
    from cachegate.store import MemoryStore
    from cachegate.store.codec import Entry, encode_entry
    from cachegate.store.encrypted import EncryptedStore

    store = EncryptedStore(MemoryStore(), {"k1": KEY}, "k1", digest_secret=b"d" * 32)
    key = "cgbench:{t:0123456789abcdef01234567}:r:" + "ab" * 32
    headers = ((b"content-type", b"application/json"),)
    entry = encode_entry(Entry(200, headers, apps.ANSWER_BYTES, (1 << 40, 1 << 41)))
    sealed = store.encrypt(key, entry)
    assert store.decrypt(key, sealed) == entry
    samples = time_sync(
        {
            "encrypt one entry": lambda: store.encrypt(key, entry),
            "decrypt one entry": lambda: store.decrypt(key, sealed),
        },
        warmup=1_000,
        iterations=20_000 if quick else 200_000,
        rounds=4 if quick else 10,
        batch=10,
    )
    return samples, len(entry)


def run(redis_url: str, namespace: str, *, quick: bool) -> EncryptionResult:
    try:
        import cachegate.store.encrypted  # noqa: F401
    except ImportError as error:
        return EncryptionResult(note=str(error))
    result = EncryptionResult()
    result.cipher, result.entry_bytes = _cipher(quick)
    result.hit = asyncio.run(_hit_path(redis_url, namespace, quick))
    return result


def render(result: EncryptionResult) -> list[str]:
    """The report section (called by `report.render`)."""
    lines = ["## 7. Encryption at rest (AES-GCM, `EncryptedStore`)", ""]
    if result.note:
        return [*lines, f"Not run: {result.note}.", ""]
    lines += [
        "In-process hit path (raw ASGI driver, one request at a time, rounds interleaved), "
        f"the ~1 KiB answer; a stored entry of {result.entry_bytes:,} bytes.",
        "",
    ]
    rows = []
    for plain in ("hit, MemoryStore", "hit, RedisStore"):
        base = result.hit[plain].median
        for name in (plain, plain + " + EncryptedStore"):
            s = result.hit[name]
            added = s.median - base
            rows.append([name, us(s.median), us(s.p95), f"{s.median / base:.2f}x", us(added)])
    lines += table(["variant", "median", "p95", "ratio vs plain", "added"], rows)
    lines += ["", "The cipher alone (mean of 10 calls per sample):", ""]
    rows = [[name, us(s.median), us(s.p95)] for name, s in result.cipher.items()]
    lines += table(["call", "median", "p95"], rows)
    lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.encryption [--quick]`: this group alone, printed."""
    from benchmarks.harness import run_alone

    return run_alone("benchmarks.encryption", "cgbenchenc", run, render, argv)


if __name__ == "__main__":
    raise SystemExit(main())
