"""What `RedisStore` sends, one round trip per operation, and how the replies read.

Apart from how a call is bounded (`store.calls`) and what its failure means (`store.redis`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError

from cachegate.store.base import MISSING_GENERATION, random_generation

RedisClient = Redis | RedisCluster

_REFUSALS = ("OOM", "READONLY", "MISCONF", "NOREPLICAS", "NOWRITE")
"""Error replies of a Redis that answers but takes no write."""


def generation(raw: object) -> int:
    """A stored generation as an int; anything unreadable counts as missing (lost)."""
    try:
        return int(raw) if isinstance(raw, bytes | str | int) else MISSING_GENERATION
    except ValueError:
        return MISSING_GENERATION


def refused(error: BaseException) -> bool:
    """Whether `error` is Redis refusing a write (as opposed to failing or timing out)."""
    if isinstance(error, OutOfMemoryError | ReadOnlyError):  # redis-py drops their prefix
        return True
    return isinstance(error, ResponseError) and str(error).startswith(_REFUSALS)


async def create_and_read(client: RedisClient, keys: Sequence[str], ttl: int) -> list[Any]:
    """SET NX each generation at a random start, then GET each (the last `len(keys)`)."""
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.set(key, random_generation(), nx=True, ex=ttl)
    for key in keys:  # GETs, not MGET: a cluster pipeline refuses MGET
        pipe.get(key)
    return await pipe.execute()


async def overwrite(client: RedisClient, values: dict[str, int], ttl: int) -> list[Any]:
    """SET each generation to its new value."""
    pipe = client.pipeline(transaction=False)
    for key, value in values.items():
        pipe.set(key, value, ex=ttl)
    return await pipe.execute()


async def bump(client: RedisClient, keys: Sequence[str], ttl: int) -> list[Any]:
    """SET NX (a lost generation restarts at a random value), INCR, EXPIRE per key; errors
    are returned in place, not raised."""
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.set(key, random_generation(), nx=True, ex=ttl)
        pipe.incr(key)
        pipe.expire(key, ttl)
    return await pipe.execute(raise_on_error=False)


def failed_incr(results: Sequence[Any], index: int) -> bool:
    """Whether the INCR of the `index`-th key of a `bump` failed: its value is not an integer."""
    return isinstance(results[index * 3 + 1], Exception)


async def set_many(client: RedisClient, items: Sequence[tuple[str, bytes]], px: int) -> list[Any]:
    """SET each key with one TTL in milliseconds, in one pipeline."""
    pipe = client.pipeline(transaction=False)
    for key, value in items:
        pipe.set(key, value, px=px)
    return await pipe.execute()
