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
from benchmarks.harness import Samples, time_async, time_sync

if TYPE_CHECKING:
    from cachegate.store import Store

KEY = bytes(range(32))


@dataclass
class EncryptionResult:
    hit: dict[str, Samples] = field(default_factory=dict)
    cipher: dict[str, Samples] = field(default_factory=dict)
    entry_bytes: int = 0
    available: bool = True
    note: str = ""


def _gated(store: Store, namespace: str) -> apps.Built:
    from cachegate import CacheGate, CacheGateMiddleware

    gate = CacheGate(
        policies=[apps.post_policy()],
        store=store,
        namespace=namespace,
    )
    app = apps.starlette_app()
    app.add_middleware(CacheGateMiddleware, gate=gate)
    return apps.Built(app, gate)


async def _hit_path(redis_url: str, namespace: str, quick: bool) -> dict[str, Samples]:
    from benchmarks.l1 import Driver
    from cachegate.store import MemoryStore
    from cachegate.store.encrypted import EncryptedStore

    def encrypted(store: Store) -> EncryptedStore:
        return EncryptedStore(store, {"k1": KEY}, "k1", digest_secret=b"d" * 32)

    built = {
        "hit, MemoryStore": _gated(MemoryStore(), f"{namespace}enc0"),
        "hit, MemoryStore + EncryptedStore": _gated(encrypted(MemoryStore()), f"{namespace}enc1"),
        "hit, RedisStore": _gated(apps.redis_store(redis_url), f"{namespace}enc2"),
        "hit, RedisStore + EncryptedStore": _gated(
            encrypted(apps.redis_store(redis_url)), f"{namespace}enc3"
        ),
    }
    drivers = {name: Driver(item.app, get=False) for name, item in built.items()}
    try:
        for driver in drivers.values():
            await driver()  # the miss that fills the entry
            await driver()
            driver.check("hit_memory")
        samples = await time_async(
            dict(drivers.items()),
            warmup=100 if quick else 1_000,
            iterations=2_000 if quick else 20_000,
            rounds=4 if quick else 10,
        )
        for driver in drivers.values():
            driver.check("hit_memory")
        return samples
    finally:
        for item in built.values():
            await item.aclose()


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
        return EncryptionResult(available=False, note=str(error))
    result = EncryptionResult()
    result.cipher, result.entry_bytes = _cipher(quick)
    result.hit = asyncio.run(_hit_path(redis_url, namespace, quick))
    return result


def _us(ns: float) -> str:
    return f"{ns / 1e3:,.2f} µs" if ns >= 1_000 else f"{ns:,.0f} ns"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def render(result: EncryptionResult) -> list[str]:
    """The report section (called by `report.render`)."""
    lines = ["## 7. Encryption at rest (AES-GCM, `EncryptedStore`)", ""]
    if not result.available:
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
            rows.append([name, _us(s.median), _us(s.p95), f"{s.median / base:.2f}x", _us(added)])
    lines += _table(["variant", "median", "p95", "ratio vs plain", "added"], rows)
    lines += ["", "The cipher alone (mean of 10 calls per sample):", ""]
    rows = [[name, _us(s.median), _us(s.p95)] for name, s in result.cipher.items()]
    lines += _table(["call", "median", "p95"], rows)
    lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.encryption [--quick]`: this group alone, printed."""
    import argparse

    from benchmarks.harness import RedisServer, delete_prefix

    parser = argparse.ArgumentParser(prog="python -m benchmarks.encryption")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    namespace = "cgbenchenc"
    with RedisServer() as server:
        try:
            result = run(server.url, namespace, quick=args.quick)
        finally:
            delete_prefix(server.url, namespace)
    print("\n".join(render(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
