"""Profile caches behind one small interface (after fastapi-cache's backends).

`RedisProfileCache` is what production uses (redis-py asyncio; single node or cluster); the
`MemoryProfileCache` is the embedded default when no Redis URL is configured. Keys carry the
model version, so a profile computed by one bundle is never served as another's.

Failures: a cache that cannot be reached raises `CacheUnavailable`; callers decide (POST skips the
write and counts it, GET answers 503). Every Redis command has a timeout, so a slow Redis stalls
nothing longer than that; redis-py reconnects on the next command once Redis is back.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Protocol

import orjson


class CacheUnavailable(Exception):
    """The cache could not be reached or did not answer in time."""


def profile_key(model_version: str, user_id: str) -> str:
    # The hash tag {user_id} keeps nothing together on purpose: keys spread across cluster slots.
    return f"utpm:profile:{model_version}:{user_id}"


class ProfileCache(Protocol):
    kind: str

    async def get(self, key: str) -> dict[str, object] | None: ...

    async def set(self, key: str, value: dict[str, object], ttl_s: int) -> None: ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


class MemoryProfileCache:
    """In-process TTL cache with LRU eviction at `max_entries`; values stored as JSON bytes."""

    kind = "memory"

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def get(self, key: str) -> dict[str, object] | None:
        hit = self._data.get(key)
        if hit is None:
            return None
        expires, raw = hit
        if expires <= time.monotonic():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        value: dict[str, object] = orjson.loads(raw)
        return value

    async def set(self, key: str, value: dict[str, object], ttl_s: int) -> None:
        self._data[key] = (time.monotonic() + ttl_s, orjson.dumps(value))
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._data.clear()


class RedisProfileCache:
    """Redis (or Redis Cluster) through redis-py's asyncio client.

    URL schemes: `redis://[:password@]host:port/db`, `rediss://` for TLS, and `redis+cluster://host:port`
    (or `rediss+cluster://`) for a cluster, discovered from that seed node.
    """

    kind = "redis"

    def __init__(self, url: str, timeout_ms: int = 50) -> None:
        timeout = timeout_ms / 1000
        if "+cluster://" in url:
            from redis.asyncio.cluster import RedisCluster

            self.client: object = RedisCluster.from_url(
                url.replace("+cluster://", "://"),
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
            )
            self.kind = "redis-cluster"
        else:
            from redis.asyncio import Redis

            self.client = Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry_on_timeout=False,
                health_check_interval=0,
            )

    async def get(self, key: str) -> dict[str, object] | None:
        from redis.exceptions import RedisError

        try:
            raw = await self.client.get(key)  # type: ignore[attr-defined]
        except (RedisError, OSError, TimeoutError) as e:
            raise CacheUnavailable(type(e).__name__) from None
        if raw is None:
            return None
        value: dict[str, object] = orjson.loads(raw)
        return value

    async def set(self, key: str, value: dict[str, object], ttl_s: int) -> None:
        from redis.exceptions import RedisError

        try:
            await self.client.set(key, orjson.dumps(value), ex=ttl_s)  # type: ignore[attr-defined]
        except (RedisError, OSError, TimeoutError) as e:
            raise CacheUnavailable(type(e).__name__) from None

    async def ping(self) -> bool:
        from redis.exceptions import RedisError

        try:
            return bool(await self.client.ping())  # type: ignore[attr-defined]
        except (RedisError, OSError, TimeoutError):
            return False

    async def close(self) -> None:
        close = getattr(self.client, "aclose", None) or self.client.close  # type: ignore[attr-defined]
        await close()


def make_cache(redis_url: str | None, timeout_ms: int, max_entries: int) -> ProfileCache:
    if redis_url:
        return RedisProfileCache(redis_url, timeout_ms)
    return MemoryProfileCache(max_entries)


def redact_url(url: str) -> str:
    """A Redis URL fit for logs: the password replaced by ***."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
