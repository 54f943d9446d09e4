"""Stale fallback: on a miss, the most recently served other model version's profile.

Cache keys carry the model version, so without this a rollout turns every GET into a 404 until
each user is recomputed under the new version. A small registry (a Redis sorted set, or process
memory with the embedded cache) records each version's last "start of serving" (the service, at
start-up and on reload) or first write (`utpm profile batch`, which may warm a version before a
reload). On a miss, GET reads the same user under the `STALE_VERSIONS` most recently served other
versions, newest first, and answers the first it finds marked `"stale": true` with its own
`model_version`. `UTPM_CACHE_STALE_FALLBACK=false` turns the reads off.
"""

from __future__ import annotations

import asyncio
import logging
import time

from service.cache import CacheUnavailable, ProfileCache, profile_key
from service.profile_record import CorruptRecord, stale_response

log = logging.getLogger("utpm.service")

# Key of the registry: version -> epoch ms it last started being served (or was first written).
REGISTRY_KEY = "utpm:versions:p2"
# Challengers' versions, by when they were loaded: no stale fallback, but profiles to forget (DELETE).
CHALLENGERS_KEY = "utpm:versions:challengers:p2"
# Other versions a miss falls back to: the previous one is the rollout case; two cover a quick second rollout.
STALE_VERSIONS = 2
# Registry entries kept: far more versions than a cache TTL keeps profiles of.
REGISTRY_MAX_ENTRIES = 32
# A registry read that failed (Redis down at start-up) is retried on a later miss, at most this often.
RETRY_S = 10.0


def redis_client_of(cache: ProfileCache) -> object | None:
    """The redis-py asyncio client behind `cache` (through a near cache); None for the embedded cache."""
    return getattr(getattr(cache, "remote", cache), "client", None)


class StaleFallback:
    """The other versions a miss of the served version falls back to, newest first."""

    def __init__(self, cache: ProfileCache) -> None:
        self.cache = cache
        self._client = redis_client_of(cache)
        self._memory: dict[str, int] = {}  # the registry when there is no Redis
        self._memory_challengers: dict[str, int] = {}
        self.challengers: list[str] = []  # the challengers this process loaded, newest first
        self.versions: list[str] = []
        self.serving: str | None = None  # the version swapped in last: a read begun before the swap tries it
        self._loaded = False
        self._last_try = 0.0

    async def refresh(self, current: str, previous: str | None = None) -> None:
        """Record `current` as served from now on and reload the fallback list; `previous`: the
        version it replaces in this process, first in the list even if the registry is unreachable."""
        from redis.exceptions import RedisError

        self._last_try = time.monotonic()
        self.serving = current
        head = [previous] if previous and previous != current else []
        now_ms = time.time_ns() // 1_000_000
        if self._client is None:
            self._memory[current] = now_ms
            ranked = sorted(self._memory, key=self._memory.__getitem__, reverse=True)
            self._loaded = True
        else:
            client = self._client
            try:
                await client.zadd(REGISTRY_KEY, {current: now_ms})  # type: ignore[attr-defined]
                await client.zremrangebyrank(REGISTRY_KEY, 0, -REGISTRY_MAX_ENTRIES - 1)  # type: ignore[attr-defined]
                raw = await client.zrevrange(REGISTRY_KEY, 0, STALE_VERSIONS + 1)  # type: ignore[attr-defined]
            except (RedisError, OSError, TimeoutError) as e:
                log.warning("model version registry unreachable (%s); stale fallback limited to %s", e, head)
                self._loaded = False
                self.versions = head
                return
            ranked = [v.decode() if isinstance(v, bytes) else str(v) for v in raw]
            self._loaded = True
        others = [v for v in dict.fromkeys([*head, *ranked]) if v != current]
        self.versions = others[:STALE_VERSIONS]

    def swapping(self, current: str, previous: str) -> None:
        """Put `previous` first before `current` is swapped in: a miss in the moment between the swap
        and `refresh` (which awaits Redis) must fall back to the version being replaced."""
        self.serving = current
        self.versions = [previous, *(v for v in self.versions if v not in (current, previous))][:STALE_VERSIONS]

    async def register_challenger(self, version: str) -> None:
        """Record a challenger's version for `registered` (never for the fallback). A Redis that cannot
        be reached costs only that: the challenger is served anyway, and forgotten while it is."""
        from redis.exceptions import RedisError

        now_ms = time.time_ns() // 1_000_000
        self.challengers = [version, *(v for v in self.challengers if v != version)][:REGISTRY_MAX_ENTRIES]
        if self._client is None:
            self._memory_challengers[version] = now_ms
            return
        try:
            await self._client.zadd(CHALLENGERS_KEY, {version: now_ms})  # type: ignore[attr-defined]
            await self._client.zremrangebyrank(CHALLENGERS_KEY, 0, -REGISTRY_MAX_ENTRIES - 1)  # type: ignore[attr-defined]
        except (RedisError, OSError, TimeoutError) as e:
            log.warning("challenger %s not recorded in the version registry (%s)", version, e)

    async def registered(self) -> list[str]:
        """Every version in the registry, newest first, then the challengers' (at most
        REGISTRY_MAX_ENTRIES each): the versions whose profiles may still be cached. CacheUnavailable
        when Redis cannot say."""
        from redis.exceptions import RedisError

        if self._client is None:
            served, tried = (
                sorted(m, key=m.__getitem__, reverse=True) for m in (self._memory, self._memory_challengers)
            )
            return list(dict.fromkeys([*served, *tried]))
        try:
            raw = [
                *await self._client.zrevrange(REGISTRY_KEY, 0, -1),  # type: ignore[attr-defined]
                *await self._client.zrevrange(CHALLENGERS_KEY, 0, -1),  # type: ignore[attr-defined]
            ]
        except (RedisError, OSError, TimeoutError) as e:
            raise CacheUnavailable(f"model version registry: {type(e).__name__}") from None
        return list(dict.fromkeys(v.decode() if isinstance(v, bytes) else str(v) for v in raw))

    async def versions_for(self, current: str) -> list[str]:
        """Versions to read on a miss under `current`, newest first. `current` is the version the
        read began under; if a swap came since, the version now served is tried first."""
        if not self._loaded and time.monotonic() - self._last_try >= RETRY_S:
            await self.refresh(self.serving or current, self.versions[0] if self.versions else None)
        return [v for v in dict.fromkeys([self.serving, *self.versions]) if v is not None and v != current]


def decode_stale(record: bytes | None, k: int) -> bytes | None:
    """The stale response of another version's record, or None when it is absent or unreadable."""
    if record is None:
        return None
    try:
        return stale_response(record, k)
    except CorruptRecord:
        return None


async def read_stale(cache: ProfileCache, fallback: StaleFallback, current: str, user_id: str, k: int) -> bytes | None:
    """The user's profile under the newest other version that has one, marked stale; None if none does.

    The reads for every fallback version share one round trip (they are issued in one loop turn).
    """
    versions = await fallback.versions_for(current)
    if not versions:
        return None
    records = await asyncio.gather(*(cache.get(profile_key(v, user_id)) for v in versions))
    for record in records:
        body = decode_stale(record, k)
        if body is not None:
            return body
    return None
