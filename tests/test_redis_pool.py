"""A burst of concurrent calls waits for pooled connections instead of failing."""

from __future__ import annotations

import asyncio

import pytest

from cachegate.store import RedisStore

pytestmark = pytest.mark.anyio


async def test_more_concurrent_calls_than_connections_all_succeed(
    redis_url: str, namespace: str
) -> None:
    store = RedisStore.from_url(redis_url, deadline=5.0, max_connections=4)
    try:
        keys = (f"{namespace}:{{t}}:g:t", f"{namespace}:{{t}}:g:a")
        results = await asyncio.gather(
            *(store.lookup(f"{namespace}:{{t}}:r:{i}", keys) for i in range(200)),
            return_exceptions=True,
        )
        assert [r for r in results if isinstance(r, BaseException)] == []
        assert store.breaker.state == "closed"
    finally:
        await store.aclose()
