"""`EncryptedStore`: AES-GCM at rest on `MemoryStore` and the real Redis.

Round trips, key rotation, tampering, values moved between keys, and the gate's L1 entries and
the embedder's L2 vectors going through it, with the stored bytes read back from the inner store.
"""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from support.stores import metrics_for

from cachegate import (
    CacheGate,
    CacheGateMiddleware,
    Policy,
    body_field,
    trusted_header,
)
from cachegate.demo.embedder import LocalEmbedder
from cachegate.embeddings import CachedEmbedder
from cachegate.store import MemoryStore, Store
from cachegate.store.encrypted import NONCE_BYTES, OVERHEAD, EncryptedStore, RejectReason

pytestmark = pytest.mark.anyio

K1 = bytes(range(32))
K2 = bytes(range(100, 132))
K3 = bytes(range(16))
SECRET = b"the patient reported nightmares since March"


def _ns(namespace: str, name: str) -> str:
    return f"{namespace}:{{t:x}}:{name}"


async def test_round_trip_and_generations_pass_through(store: Store, namespace: str) -> None:
    encrypted = EncryptedStore(store, {"k1": K1}, "k1", digest_secret=b"d" * 32)
    key, gen = _ns(namespace, "r:1"), _ns(namespace, "g:t")
    (generation,) = await encrypted.generations([gen])
    await encrypted.write(key, SECRET, 60)
    found = await encrypted.lookup(key, [gen])
    assert found.value == SECRET
    assert found.generations == (generation,)
    raw = (await store.get_many([key]))[0]
    assert raw is not None and SECRET not in raw
    assert raw[:4] == b"\x01\x02k1" and len(raw) == len(SECRET) + OVERHEAD + 2
    # generations are stored as they are: the inner store reads the same counter
    assert (await store.lookup(key, [gen])).generations == (generation,)
    await encrypted.bump([gen])
    assert (await encrypted.lookup(key, [gen])).generations == (generation + 1,)

    items = [(_ns(namespace, f"v:{i}"), bytes([i]) * i) for i in range(5)]
    await encrypted.set_many(items, 60)
    keys = [k for k, _ in items]
    assert await encrypted.get_many([*keys, _ns(namespace, "v:none")]) == [
        *(v for _, v in items),
        None,
    ]
    assert encrypted.rejected == {"unknown_key": 0, "invalid": 0}
    await encrypted.delete(key)
    assert (await encrypted.lookup(key, [gen])).value is None


async def test_two_writes_of_one_value_differ(store: Store, namespace: str) -> None:
    encrypted = EncryptedStore(store, {"k1": K1}, "k1", digest_secret=b"d" * 32)
    a, b = _ns(namespace, "a"), _ns(namespace, "b")
    await encrypted.write(a, SECRET, 60)
    await encrypted.write(b, SECRET, 60)
    raw_a, raw_b = await store.get_many([a, b])
    assert raw_a is not None and raw_b is not None
    assert raw_a[4 : 4 + NONCE_BYTES] != raw_b[4 : 4 + NONCE_BYTES]


async def test_rotation(store: Store, namespace: str) -> None:
    key = _ns(namespace, "r:rot")
    old = EncryptedStore(store, {"k1": K1}, "k1", digest_secret=b"d" * 32)
    await old.write(key, b"written under k1", 60)

    rejected: list[RejectReason] = []
    rotated = EncryptedStore(
        store, {"k1": K1, "k2": K2}, "k2", on_reject=rejected.append, digest_secret=b"d" * 32
    )
    assert (await rotated.lookup(key, [])).value == b"written under k1"
    await rotated.write(key + "2", b"written under k2", 60)
    raw = (await store.get_many([key + "2"]))[0]
    assert raw is not None and raw[1:4] == b"\x02k2"
    assert await old.get_many([key + "2"]) == [None]  # the old deployment cannot read k2
    assert old.rejected["unknown_key"] == 1

    retired = EncryptedStore(
        store, {"k2": K2}, "k2", on_reject=rejected.append, digest_secret=b"d" * 32
    )
    assert (await retired.lookup(key, [])).value is None
    assert await retired.get_many([key, key + "2"]) == [None, b"written under k2"]
    assert retired.rejected == {"unknown_key": 2, "invalid": 0}
    assert rejected == ["unknown_key", "unknown_key"]


async def test_tampering_is_a_miss(store: Store, namespace: str) -> None:
    encrypted = EncryptedStore(store, {"k1": K1}, "k1", digest_secret=b"d" * 32)
    key = _ns(namespace, "r:t")
    await encrypted.write(key, SECRET, 60)
    raw = (await store.get_many([key]))[0]
    assert raw is not None
    positions = {
        "version": 0,
        "id length": 1,
        "key id": 2,
        "nonce": 4,
        "ciphertext": 4 + NONCE_BYTES,
        "tag": len(raw) - 1,
    }
    for where, position in positions.items():
        tampered = bytearray(raw)
        tampered[position] ^= 0x01
        await store.write(key, bytes(tampered), 60)
        assert (await encrypted.lookup(key, [])).value is None, where
    for broken in (b"", b"\x01", raw[:20], raw[:-1], raw + b"\x00", b"CG\x01" + SECRET):
        await store.write(key, broken, 60)
        assert await encrypted.get_many([key]) == [None]
    # a flipped key id or id length names a key that is not configured
    assert encrypted.rejected == {"unknown_key": 2, "invalid": len(positions) - 2 + 6}


async def test_a_value_moved_to_another_key_fails(store: Store, namespace: str) -> None:
    encrypted = EncryptedStore(store, {"k1": K1, "same": K1}, "k1", digest_secret=b"d" * 32)
    a, b = _ns(namespace, "r:a"), _ns(namespace, "r:b")
    await encrypted.write(a, b"answer for a", 60)
    await encrypted.write(b, b"answer for b", 60)
    raw_a, raw_b = await store.get_many([a, b])
    assert raw_a is not None and raw_b is not None
    await store.set_many([(a, raw_b), (b, raw_a)], 60)  # swapped
    assert await encrypted.get_many([a, b]) == [None, None]
    # relabelled with another configured id holding the same key bytes: the header is bound too
    relabelled = b"\x01\x04same" + raw_a[4:]
    await store.write(a, relabelled, 60)
    assert (await encrypted.lookup(a, [])).value is None
    assert encrypted.rejected == {"unknown_key": 0, "invalid": 3}


def test_wrong_associated_data() -> None:
    encrypted = EncryptedStore(MemoryStore(), {"k1": K1}, "k1", digest_secret=b"d" * 32)
    data = encrypted.encrypt("ns:{t:a}:r:1", SECRET)
    assert encrypted.decrypt("ns:{t:a}:r:1", data) == SECRET
    for other in ("ns:{t:a}:r:2", "ns:{t:b}:r:1", "", "ns:{t:a}:r:1 "):
        assert encrypted.decrypt(other, data) is None
    # another deployment's key under the same id: authentication fails
    impostor = EncryptedStore(MemoryStore(), {"k1": K2}, "k1", digest_secret=b"d" * 32)
    assert impostor.decrypt("ns:{t:a}:r:1", data) is None
    assert impostor.rejected["invalid"] == 1


@settings(max_examples=200, deadline=None)
@given(key=st.text(max_size=200), value=st.binary(max_size=2048), noise=st.binary(max_size=80))
def test_round_trip_property(key: str, value: bytes, noise: bytes) -> None:
    encrypted = EncryptedStore(MemoryStore(), {"a": K3, "b": K2}, "b", digest_secret=b"d" * 32)
    data = encrypted.encrypt(key, value)
    assert len(data) == len(value) + OVERHEAD + 1
    assert encrypted.decrypt(key, data) == value
    assert encrypted.decrypt(key + "x", data) is None
    assert encrypted.decrypt(key, noise) is None  # arbitrary bytes never raise


@pytest.mark.parametrize(
    ("keys", "active", "message"),
    [
        ({}, "k", "at least one key"),
        ({"k": b"short"}, "k", "5 bytes"),
        ({"k": bytes(33)}, "k", "33 bytes"),
        ({"k": "a" * 32}, "k", "must be bytes"),
        ({"k": K1}, "other", "not one of the configured"),
        ({"": K1}, "", "non-empty"),
        ({"clé": K1}, "clé", "ASCII"),
        ({"k" * 256: K1}, "k" * 256, "longer than 255"),
    ],
)
def test_keys_are_validated(keys: dict[str, bytes], active: str, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        EncryptedStore(MemoryStore(), keys, active, digest_secret=b"d" * 32)


def test_all_aes_key_sizes() -> None:
    for size in (16, 24, 32):
        encrypted = EncryptedStore(MemoryStore(), {"k": bytes(size)}, "k", digest_secret=b"d" * 32)
        assert encrypted.decrypt("x", encrypted.encrypt("x", SECRET)) == SECRET


def test_import_cachegate_does_not_load_the_cipher() -> None:
    code = (
        "import sys, cachegate, cachegate.store, cachegate.gate;"
        "loaded = [m for m in sys.modules if m == 'cachegate.store.encrypted'"
        " or m.startswith('cryptography.hazmat')];"
        "print(loaded)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


async def test_l1_entries_and_l2_vectors_are_encrypted(store: Store, namespace: str) -> None:
    encrypted = EncryptedStore(
        store, {"k1": K1}, "k1", digest_secret=b"d" * 32, metrics=metrics_for(store)
    )
    raw_writes: list[tuple[str, bytes]] = []
    answer = "Ms. Example dreams of the sea"

    class Spy:
        """Records what reaches the inner store (a real store underneath, not a mock)."""

        def __getattr__(self, name: str) -> object:
            return getattr(store, name)

        async def write(self, key: str, value: bytes, ttl: float) -> None:
            raw_writes.append((key, value))
            await store.write(key, value, ttl)

        async def set_many(self, items: list[tuple[str, bytes]], ttl: float) -> None:
            raw_writes.extend(items)
            await store.set_many(items, ttl)

    encrypted.inner = Spy()  # type: ignore[assignment]
    embedder = CachedEmbedder(LocalEmbedder(dimension=16), encrypted, namespace=namespace)

    async def ask(request: Request) -> Response:
        body = await request.json()
        vectors = await embedder.embed(
            texts=[body["query"]],
            model="local",
            input_type="search_query",
            embedding_types=["float"],
        )
        return JSONResponse({"answer": answer, "dim": len((vectors.embeddings.float_ or [[]])[0])})

    gate = CacheGate(
        policies=[
            Policy(
                "/ai/query",
                tenant=trusted_header("x-workspace-id"),
                subject=body_field("client_id"),
                key={"query": body_field("query")},
            )
        ],
        store=encrypted,
        namespace=namespace,
    )
    app = Starlette(routes=[Route("/ai/query", ask, methods=["POST"])])
    app.add_middleware(CacheGateMiddleware, gate=gate)
    transport = httpx.ASGITransport(app=app)
    body = {"query": "what about sleep", "client_id": "c1"}
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        first = await client.post("/ai/query", json=body, headers={"x-workspace-id": "w1"})
        second = await client.post("/ai/query", json=body, headers={"x-workspace-id": "w1"})
    assert first.headers["x-cachegate"] == "miss" and second.headers["x-cachegate"] == "hit"
    assert json.loads(second.content) == {"answer": answer, "dim": 16}
    kinds = {"r" if ":r:" in key else "v" if ":v:" in key else key for key, _ in raw_writes}
    assert kinds == {"r", "v"}  # one L1 entry and one L2 vector went through the wrapper
    for key, value in raw_writes:
        assert value[:4] == b"\x01\x02k1", key
        assert answer.encode() not in value and b"CG\x01" not in value[:8]
        assert encrypted.decrypt(key, value) is not None
    # the L2 vector is served from the encrypted store on a direct call too
    again = await embedder.embed(
        texts=["what about sleep"],
        model="local",
        input_type="search_query",
        embedding_types=["float"],
        tenant="w1",
    )
    assert embedder.stats.hits == 1 and len((again.embeddings.float_ or [[]])[0]) == 16
    await gate.drain()
