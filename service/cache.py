"""Profile caches behind one small interface (after fastapi-cache's backends).

`RedisProfileCache` is what production uses (redis-py asyncio; one server, a cluster or Sentinel); the
`MemoryProfileCache` is the embedded default when no Redis URL is configured. Values are opaque
bytes (`service.profile_record`'s format); keys carry that format and the model version, so a
profile computed by one bundle is never served as another's.

Failures: a cache that cannot be reached raises `CacheUnavailable`; callers decide (POST skips the
write and counts it, GET answers 503). Reads and writes of one event-loop turn go to Redis
together (`Coalescer`): reads as one MGET, writes as one script call (a pipeline of SETs on a
cluster, or where Redis refuses scripts). Every Redis command has a timeout, so a slow Redis stalls nothing longer
than that, and a circuit breaker (`service.breaker`) stops calling a Redis that keeps failing;
redis-py reconnects on the next command once Redis is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from service.breaker import CircuitBreaker
from service.redis_client import async_client, kind_of

log = logging.getLogger("utpm.service")

In = TypeVar("In")
Out = TypeVar("Out")

# The embedded cache's bound: ~0.4 GB at 100 tags a profile, enough for a demo or one small replica.
MEMORY_CACHE_MAX_ENTRIES = 100_000
# The near cache's bound: it holds about (reads/s x its TTL) profiles; 10k covers 10k GET/s at 1 s.
NEAR_CACHE_MAX_ENTRIES = 10_000


# Writes one flush of profiles: KEYS the profile keys, ARGV their values, then their TTLs in ms.
SET_ALL_SCRIPT = "for i, key in ipairs(KEYS) do redis.call('SET', key, ARGV[i], 'PX', ARGV[#KEYS + i]) end return #KEYS"


def scripts_refused(e: Exception) -> bool:
    """A Redis that will not run scripts at all (ACL, renamed or disabled EVAL) rather than these writes."""
    text = str(e).lower()
    return text.startswith("noperm") or "unknown command" in text or "no permissions" in text


class CacheUnavailable(Exception):
    """The cache could not be reached or did not answer in time (`retry_after_s`: when to try again)."""

    def __init__(self, message: str, retry_after_s: int = 0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def profile_key(model_version: str, user_id: str) -> str:
    # No hash tag on purpose: keys spread across cluster slots. "p2": the record format.
    return f"utpm:profile:p2:{model_version}:{user_id}"


class ProfileCache(Protocol):
    kind: str

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_ms: int) -> None: ...

    async def delete(self, keys: Sequence[str]) -> list[bool]:
        """Remove `keys`; for each, whether it was there."""
        ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


class TtlLru:
    """Bytes by key, each with its own expiry, evicting the least recently used past `max_entries`.

    Our own for speed: measured against cachetools.TLRUCache, per GET hit in process (`utpm bench
    loop`, docs/performance.md "The near cache's store").
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def get(self, key: str) -> bytes | None:
        hit = self._data.get(key)
        if hit is None:
            return None
        expires, value = hit
        if expires <= time.monotonic():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return value

    def put(self, key: str, value: bytes, ttl_s: float) -> None:
        now = time.monotonic()
        self._data[key] = (now + ttl_s, value)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)
        # Expired entries leave from the least recently used end, two per put (more than arrive),
        # so a short-TTL cache holds live profiles, not `max_entries` dead ones.
        for _ in range(2):
            oldest = next(iter(self._data.values()), None)
            if oldest is None or oldest[0] > now:
                break
            self._data.popitem(last=False)

    def pop(self, key: str) -> bool:
        """Remove `key`; whether it held a live value."""
        hit = self._data.pop(key, None)
        return hit is not None and hit[0] > time.monotonic()

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        self._data.clear()


class MemoryProfileCache:
    """The embedded cache: in-process, TTL per entry, LRU eviction at `max_entries`."""

    kind = "memory"

    def __init__(self, max_entries: int = MEMORY_CACHE_MAX_ENTRIES) -> None:
        self._store = TtlLru(max_entries)

    async def get(self, key: str) -> bytes | None:
        return self._store.get(key)

    async def set(self, key: str, value: bytes, ttl_ms: int) -> None:
        self._store.put(key, value, ttl_ms / 1000)

    async def delete(self, keys: Sequence[str]) -> list[bool]:
        return list(map(self._store.pop, keys))

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._store.clear()


class Coalescer(Generic[In, Out]):
    """Calls made in the same event-loop turn share one Redis round trip (MGET, or one write command).

    `submit(item)` queues the item and, for the first of a turn, schedules a flush with
    `call_soon`: it runs after every request already runnable in this turn has queued its own, so
    the flush sends them all as one command. redis-py's cost on the event loop is mostly per
    command; under load a turn holds several requests, and they share it. `run(items)` returns one
    result (or `CacheUnavailable`) per item, or raises `CacheUnavailable` for all of them.
    """

    def __init__(
        self,
        run: Callable[[list[In]], Awaitable[list[Out | BaseException]]],
        on_flush: Callable[[int], object] | None = None,
    ) -> None:
        self._run = run
        self._on_flush = on_flush
        self._items: list[In] = []
        self._futures: list[asyncio.Future[Out]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: In) -> Out:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Out] = loop.create_future()
        if not self._items:
            loop.call_soon(self._flush)
        self._items.append(item)
        self._futures.append(future)
        return await future

    def _flush(self) -> None:
        items, futures = self._items, self._futures
        self._items, self._futures = [], []
        if self._on_flush is not None:
            self._on_flush(len(items))
        task = asyncio.get_running_loop().create_task(self._send(items, futures))
        self._tasks.add(task)  # held until done: the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def _send(self, items: list[In], futures: list[asyncio.Future[Out]]) -> None:
        try:
            results = await self._run(items)
        except BaseException as e:  # the whole turn fails; a bug or a cancellation must not leave callers hanging
            error = e if isinstance(e, CacheUnavailable) else CacheUnavailable(f"cache call failed: {type(e).__name__}")
            for future in futures:
                if not future.done():
                    future.set_exception(error)
            if error is not e:
                raise
            return
        for future, result in zip(futures, results, strict=True):
            if future.done():  # the caller went away (cancelled)
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)


class RedisProfileCache:
    """Redis (one server, a Cluster, or the master behind Sentinels) through redis-py's asyncio client;
    the URL schemes are `service.redis_client`'s."""

    def __init__(
        self,
        url: str,
        timeout_ms: int = 200,
        on_read_batch: Callable[[int], object] | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.breaker = breaker or CircuitBreaker()
        self.kind = kind_of(url)
        # no retries of our own: a timeout is the breaker's to count, not redis-py's to hide
        extra = {} if self.kind == "redis-cluster" else {"retry_on_timeout": False, "health_check_interval": 0}
        self.client: object = async_client(url, timeout_ms / 1000, **extra)
        self._reads: Coalescer[str, bytes | None] = Coalescer(self._mget, on_read_batch)
        self._writes: Coalescer[tuple[str, bytes, int], None] = Coalescer(self._mset)
        # A cluster spreads one flush's keys over slots, which one script call cannot write.
        self._set_all: Any = None if self.kind == "redis-cluster" else self.client.register_script(SET_ALL_SCRIPT)

    async def get(self, key: str) -> bytes | None:
        if not self.breaker.allow():  # fail fast: not even queued for the next round trip
            raise self._open_error()
        return await self._reads.submit(key)

    async def set(self, key: str, value: bytes, ttl_ms: int) -> None:
        if not self.breaker.allow():
            raise self._open_error()
        await self._writes.submit((key, value, ttl_ms))

    async def delete(self, keys: Sequence[str]) -> list[bool]:
        """A DEL per key in one pipeline (one round trip; per node on a cluster, whose pipeline takes
        single-key commands in any slot), so that each key's answer is known; rare enough not to need
        the write coalescer."""
        from redis.exceptions import RedisError

        if not keys:
            return []
        if not self.breaker.allow():
            raise self._open_error()
        try:
            pipe = self.client.pipeline(transaction=False)  # type: ignore[attr-defined]
            for key in keys:
                pipe.delete(key)
            answers = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as e:
            raise self._failed(e) from None
        self.breaker.success()
        return [bool(a) for a in answers]

    def _open_error(self) -> CacheUnavailable:
        return CacheUnavailable("circuit breaker open", self.breaker.retry_after_s())

    def _failed(self, e: BaseException) -> CacheUnavailable:
        self.breaker.failure()
        return CacheUnavailable(type(e).__name__, self.breaker.retry_after_s() if self.breaker.state == "open" else 0)

    async def _mget(self, keys: list[str]) -> list[bytes | BaseException | None]:
        from redis.exceptions import RedisError

        try:
            if self.kind == "redis-cluster":  # keys of one batch live in many slots
                values: list[bytes | None] = await self.client.mget_nonatomic(keys)  # type: ignore[attr-defined]
            else:
                values = await self.client.mget(keys)  # type: ignore[attr-defined]
        except (RedisError, OSError, TimeoutError) as e:
            raise self._failed(e) from None
        self.breaker.success()
        return list(values)

    async def _mset(self, items: list[tuple[str, bytes, int]]) -> list[BaseException | None]:
        from redis.exceptions import RedisError, ResponseError

        try:
            if self._set_all is not None:  # one command for the whole flush: a pipeline costs the loop per SET
                keys, values, ttls = zip(*items, strict=True)
                try:
                    await self._set_all(keys=list(keys), args=[*values, *ttls])
                except ResponseError as e:
                    if not scripts_refused(e):
                        self.breaker.success()  # Redis answered; it refused these writes (e.g. OOM)
                        return [CacheUnavailable(f"ResponseError: {e}")] * len(items)
                    log.warning("Redis refuses scripts (%s); profiles are written with pipelined SETs", e)
                    self._set_all = None
                else:
                    self.breaker.success()
                    return [None] * len(items)
            async with self.client.pipeline(transaction=False) as pipe:  # type: ignore[attr-defined]
                for key, value, ttl_ms in items:
                    pipe.set(key, value, px=ttl_ms)
                results = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError, TimeoutError) as e:
            raise self._failed(e) from None
        self.breaker.success()
        return [CacheUnavailable(type(r).__name__) if isinstance(r, BaseException) else None for r in results]

    async def ping(self) -> bool:
        from redis.exceptions import RedisError

        if not self.breaker.allow():  # open: known down, and readiness must answer at once
            return False
        try:
            ok = bool(await self.client.ping())  # type: ignore[attr-defined]
        except (RedisError, OSError, TimeoutError) as e:
            self._failed(e)
            return False
        self.breaker.success()
        return ok

    async def close(self) -> None:
        close = getattr(self.client, "aclose", None) or self.client.close  # type: ignore[attr-defined]
        await close()


class NearCache:
    """A small in-process layer in front of Redis for profiles read again within `ttl_s`.

    One recommendation request fans out to several recall channels, and each asks for the same
    user's profile within milliseconds; a feed refresh asks again. Those repeats are answered
    from process memory instead of another Redis round trip (which costs more event-loop time than
    the rest of a cache hit). What it trades: a profile recomputed by *another* replica can be
    served up to `ttl_s` late, and during a Redis outage a profile read in the last `ttl_s` is
    still served. This replica's own writes update it at once; misses are not kept (a user
    profiled elsewhere is visible as soon as Redis has it); keys carry the model version, so a
    reload never serves the old model's profiles. LRU-bounded at `max_entries`.
    """

    def __init__(
        self,
        remote: ProfileCache,
        ttl_ms: int,
        max_entries: int = NEAR_CACHE_MAX_ENTRIES,
        on_hit: Callable[[], object] | None = None,
    ) -> None:
        self.remote = remote
        self.kind = remote.kind
        self.ttl_s = ttl_ms / 1000
        self._on_hit = on_hit
        # the in-process store; `utpm bench loop` swaps in the library it is measured against
        self.store: TtlLru = TtlLru(max_entries)

    async def get(self, key: str) -> bytes | None:
        value = self.store.get(key)
        if value is not None:
            if self._on_hit is not None:
                self._on_hit()
            return value
        value = await self.remote.get(key)
        if value is not None:
            self.store.put(key, value, self.ttl_s)
        return value

    async def set(self, key: str, value: bytes, ttl_ms: int) -> None:
        self.store.put(key, value, min(self.ttl_s, ttl_ms / 1000))
        await self.remote.set(key, value, ttl_ms)

    async def delete(self, keys: Sequence[str]) -> list[bool]:
        # this replica forgets at once; another replica's near cache may serve it for up to `ttl_s`
        for key in keys:
            self.store.pop(key)
        return await self.remote.delete(keys)

    async def ping(self) -> bool:
        return await self.remote.ping()

    async def close(self) -> None:
        self.store.clear()
        await self.remote.close()


def make_cache(
    redis_url: str | None,
    timeout_ms: int,
    near_ttl_ms: int = 0,
    on_read_batch: Callable[[int], object] | None = None,
    on_near_hit: Callable[[], object] | None = None,
    on_breaker_state: Callable[[str], object] | None = None,
) -> ProfileCache:
    """Redis when a URL is given (behind a `NearCache` when `near_ttl_ms` > 0), else in-process.

    `on_read_batch(n)`: n reads shared one Redis round trip; `on_near_hit()`: a read the near
    cache answered; `on_breaker_state(state)`: the Redis circuit breaker changed state.
    """
    if not redis_url:
        return MemoryProfileCache()
    redis = RedisProfileCache(redis_url, timeout_ms, on_read_batch, CircuitBreaker(on_state=on_breaker_state))
    if near_ttl_ms <= 0:
        return redis
    return NearCache(redis, near_ttl_ms, on_hit=on_near_hit)


def breaker_of(cache: ProfileCache) -> CircuitBreaker | None:
    """The Redis circuit breaker behind `cache` (None for the embedded cache)."""
    breaker = getattr(getattr(cache, "remote", cache), "breaker", None)
    return breaker if isinstance(breaker, CircuitBreaker) else None
