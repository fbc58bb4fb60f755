"""Redis connection URLs: single node (`redis://`, `rediss://`, `unix://`, handled by redis-py),
Cluster (the same URLs with `cluster=True`) and Sentinel, which redis-py has no URL for:

    redis+sentinel://[user:password@]host:port[,host:port...]/service_name[/db]
        [?sentinel_username=...&sentinel_password=...]

The user and password are the master's (ACL); the query parameters authenticate to the
sentinels when they require it. Every client is built with retries off: the store bounds each
call by its own deadline and the fresh path is the fallback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from cachegate.store.pool import BoundedConnectionPool

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379
_SENTINEL_QUERY = frozenset({"sentinel_username", "sentinel_password"})


@dataclass(frozen=True, slots=True)
class SentinelURL:
    """A parsed `redis+sentinel://` URL."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None


def _host_port(text: str) -> tuple[str, int]:
    """`host`, `host:port`, `[v6]` or `[v6]:port`; the port defaults to 26379."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"bad sentinel address {text!r}")
        port = rest[1:]
    else:
        host, _, port = text.partition(":")
    if not host:
        raise ValueError(f"bad sentinel address {text!r}")
    try:
        number = int(port) if port else SENTINEL_PORT
    except ValueError:
        raise ValueError(f"bad sentinel port in {text!r}") from None
    if not 0 < number < 65536:
        raise ValueError(f"bad sentinel port in {text!r}")
    return host, number


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse `redis+sentinel://[user:password@]host:port[,host:port]/service[/db][?query]`."""
    scheme, separator, rest = url.partition("://")
    if scheme.lower() != SENTINEL_SCHEME or not separator:
        raise ValueError(f"not a {SENTINEL_SCHEME}:// URL")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels = tuple(_host_port(part) for part in hosts.split(",") if part)
    if not sentinels:
        raise ValueError("a sentinel URL names at least one sentinel")
    parts = [unquote(part) for part in path.split("/") if part]
    if not parts or len(parts) > 2:
        raise ValueError("a sentinel URL's path is /service_name or /service_name/db")
    try:
        db = int(parts[1]) if len(parts) == 2 else 0
    except ValueError:
        raise ValueError(f"bad database number {parts[1]!r}") from None
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = set(options) - _SENTINEL_QUERY
    if unknown:
        raise ValueError(f"unknown sentinel URL parameters: {', '.join(sorted(unknown))}")
    return SentinelURL(
        sentinels=sentinels,
        service=parts[0],
        db=db,
        username=username,
        password=password,
        sentinel_username=options.get("sentinel_username") or None,
        sentinel_password=options.get("sentinel_password") or None,
    )


def connect(
    url: str,
    *,
    cluster: bool,
    connect_timeout: float,
    socket_timeout: float | None,
    max_connections: int = 64,
) -> Redis | RedisCluster:
    """A redis-py asyncio client for `url` with retries off (`Redis` or `RedisCluster`).

    A single node gets a `BoundedConnectionPool` of `max_connections`: past it, a call waits for
    a free connection (bounded by the store's deadline) instead of failing with
    `MaxConnectionsError`, which under a burst of concurrent requests would open the breaker for
    nothing.
    """
    options: dict[str, Any] = {
        "retry": Retry(NoBackoff(), 0),
        "socket_connect_timeout": connect_timeout,
        "socket_timeout": socket_timeout,
    }
    if url.lower().startswith(SENTINEL_SCHEME + ":"):
        if cluster:
            raise ValueError("a sentinel URL cannot name a cluster")
        parsed = parse_sentinel_url(url)
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(parsed.sentinels),
            sentinel_kwargs={
                **options,
                "username": parsed.sentinel_username,
                "password": parsed.sentinel_password,
            },
            **options,
        )
        master: Redis = sentinel.master_for(
            parsed.service,
            redis_class=Redis,
            db=parsed.db,
            username=parsed.username,
            password=parsed.password,
            health_check_interval=0,
        )
        return master
    if cluster:
        return RedisCluster.from_url(url, **options)
    pool = BoundedConnectionPool.from_url(
        url, max_connections=max_connections, health_check_interval=0, **options
    )
    client = Redis(connection_pool=pool)
    client.auto_close_connection_pool = True
    return client
