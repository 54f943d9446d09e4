"""The profile cache on its own: the record format, and Redis round trips shared by one loop turn."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
import redis

from service.cache import CacheUnavailable, RedisProfileCache, profile_key
from service.profile_record import CorruptRecord, cached_response, render, stale_response
from tests.conftest import RedisServer, free_port

SWAP_DB = 8

NAMES = ["sci-fi", 'quote " and },{"tag":"x', "über", "noir", "a\\b"]
SCORES = [0.9, 0.5, 0.25, -0.125, -1.0]


@pytest.mark.parametrize("n", [0, 1, 2, 5])
def test_record_answers_any_k_like_the_full_json(n: int) -> None:
    unknown = {"genres": ["??"]}
    rendered = render(
        'user "1"',
        "v1",
        NAMES[:n],
        SCORES[:n],
        unknown,
        False,
        computed_at_ms=1_764_529_200_123,
        expires_at_ms=1_764_532_800_123,
    )
    record = rendered.record()
    for k in range(1, 8):
        want = [{"tag": t, "score": s} for t, s in zip(NAMES[: min(k, n)], SCORES, strict=False)]
        for body, cached in ((rendered.response(k, cached=False), False), (cached_response(record, k), True)):
            parsed = orjson.loads(body)
            assert parsed == {
                "user_id": 'user "1"',
                "model_version": "v1",
                "tags": want,
                "unknown": unknown,
                "all_unknown": False,
                "computed_at": "2025-11-30T19:00:00.123Z",
                "expires_at": "2025-11-30T20:00:00.123Z",
                "stale": False,
                "cached": cached,
            }
        assert orjson.loads(stale_response(record, k))["stale"] is True


def test_record_refuses_what_it_did_not_write() -> None:
    for junk in (b"", b"{}", b'{"user_id": "x", "tags": []}', b"P1\xff\xff"):
        with pytest.raises(CorruptRecord):
            cached_response(junk, 3)


def test_reads_of_one_turn_share_one_round_trip(redis_server: RedisServer) -> None:
    batches: list[int] = []

    async def scenario() -> None:
        cache = RedisProfileCache(redis_server.url, timeout_ms=1000, on_read_batch=batches.append)
        try:
            await asyncio.gather(*(cache.set(f"t:share:{i}", f"v{i}".encode(), 60_000) for i in range(20)))
            values = await asyncio.gather(*(cache.get(f"t:share:{i}") for i in range(25)))
            assert values == [f"v{i}".encode() for i in range(20)] + [None] * 5
        finally:
            await cache.close()

    asyncio.run(scenario())
    assert batches == [25]  # 25 concurrent reads, one MGET
    direct = redis.Redis(port=redis_server.port)
    assert direct.get("t:share:7") == b"v7" and 0 < direct.ttl("t:share:7") <= 60


def _calls(client: redis.Redis, command: str) -> int:
    """Times Redis was sent `command`: run, failed or refused."""
    stats = client.info("commandstats").get(f"cmdstat_{command}", {})
    return sum(int(stats.get(k, 0)) for k in ("calls", "rejected_calls"))


def test_writes_of_one_turn_are_one_script_call_each_key_with_its_ttl(redis_server: RedisServer) -> None:
    direct = redis.Redis(port=redis_server.port)
    direct.script_flush()

    async def scenario() -> None:
        cache = RedisProfileCache(redis_server.url, timeout_ms=1000)
        try:
            await cache.set("t:script:warm", b"w", 60_000)  # loads the script (NOSCRIPT, then SCRIPT LOAD)
            before = _calls(direct, "evalsha")
            ttls = [60_000 if i % 2 else 5_000 for i in range(12)]
            await asyncio.gather(*(cache.set(f"t:script:{i}", f"v{i}".encode(), t) for i, t in enumerate(ttls)))
            assert _calls(direct, "evalsha") - before == 1
        finally:
            await cache.close()

    asyncio.run(scenario())
    assert [direct.get(f"t:script:{i}") for i in range(12)] == [f"v{i}".encode() for i in range(12)]
    assert 5_000 < direct.pttl("t:script:1") <= 60_000 and 0 < direct.pttl("t:script:0") <= 5_000


def test_a_redis_that_refuses_scripts_gets_pipelined_writes(redis_server: RedisServer) -> None:
    direct = redis.Redis(port=redis_server.port)
    direct.acl_setuser("noscripts", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-@scripting"])
    url = f"redis://noscripts:pw@127.0.0.1:{redis_server.port}/0"

    async def scenario() -> None:
        cache = RedisProfileCache(url, timeout_ms=1000)
        try:
            await asyncio.gather(*(cache.set(f"t:noscript:{i}", b"v", 60_000) for i in range(3)))  # refused, then piped
            tried = _calls(direct, "evalsha")
            assert tried > 0
            await cache.set("t:noscript:later", b"v", 60_000)
            assert _calls(direct, "evalsha") == tried  # straight to SET: the script is not tried again
            assert cache.breaker.state == "closed"
        finally:
            await cache.close()

    try:
        asyncio.run(scenario())
    finally:
        direct.acl_deluser("noscripts")
    assert all(direct.get(k) == b"v" for k in ["t:noscript:0", "t:noscript:1", "t:noscript:2", "t:noscript:later"])


def test_unreachable_redis_fails_every_caller_of_the_turn() -> None:
    async def scenario() -> None:
        cache = RedisProfileCache(f"redis://127.0.0.1:{free_port()}/0", timeout_ms=200)
        try:
            results = await asyncio.gather(*(cache.get(f"k{i}") for i in range(5)), return_exceptions=True)
            assert all(isinstance(r, CacheUnavailable) for r in results), results
            with pytest.raises(CacheUnavailable):
                await cache.set("k", b"v", 10_000)
        finally:
            await cache.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", ["ours", "library"])
def test_ttl_lru_expires_and_evicts_the_least_recently_used(kind: str) -> None:
    """Our store and its stand-in on cachetools.TLRUCache (`utpm bench loop` measures one against the
    other) behave alike."""
    import time

    from loadtest.loop import LibraryTtlLru
    from service.cache import TtlLru

    TtlLru = TtlLru if kind == "ours" else LibraryTtlLru  # type: ignore[misc]
    store = TtlLru(max_entries=2)
    store.put("a", b"1", 60)
    store.put("b", b"2", 60)
    assert store.get("a") == b"1"  # a is now the most recently used
    store.put("c", b"3", 60)
    assert store.get("b") is None and store.get("a") == b"1" and store.get("c") == b"3"
    store.put("short", b"4", 0.05)
    time.sleep(0.08)
    assert store.get("short") is None
    # expired entries do not wait for the LRU bound: each put sweeps some from the old end
    many = TtlLru(max_entries=1000)
    for i in range(100):
        many.put(f"k{i}", b"x", 0.01)
    time.sleep(0.02)
    for i in range(60):
        many.put(f"new{i}", b"y", 60)
    assert len(many) == 60
    assert many.pop("new0") and not many.pop("new0") and many.get("new0") is None


def test_a_miss_during_a_swap_falls_back_to_the_version_being_replaced(redis_server: RedisServer) -> None:
    """Between the engine swap and the registry refresh (which awaits Redis), the fallback list must
    already name the old version: alternating reloads A -> B -> A once answered such a GET with 404."""
    from service.stale import StaleFallback, read_stale

    # a database of its own: other tests' versions in the shared server's registry would join the lists
    redis.Redis(port=redis_server.port, db=SWAP_DB).flushdb()

    async def go() -> tuple[list[str], list[str], bytes | None, bytes | None]:
        cache = RedisProfileCache(f"redis://127.0.0.1:{redis_server.port}/{SWAP_DB}")
        try:
            fallback = StaleFallback(cache)
            await fallback.refresh("A")
            await fallback.refresh("B", previous="A")  # serving B; its misses fall back to A
            record = render("u", "B", ["x", "y"], [2.0, 1.0], {}, False, computed_at_ms=0, expires_at_ms=1).record()
            await cache.set(profile_key("B", "u"), record, 60_000)
            fallback.swapping("A", "B")  # the reload back to A, before its refresh has run
            during_swap = await read_stale(cache, fallback, "A", "u", 2)
            await fallback.refresh("A", previous="B")
            # a read that began under B (its miss awaited) while the swap to A came: B's own record
            # is gone from the list of others, A is served now and is tried first
            await cache.set(profile_key("A", "v"), record, 60_000)
            begun_before = await read_stale(cache, fallback, "B", "v", 2)
            return await fallback.versions_for("A"), await fallback.versions_for("B"), during_swap, begun_before
        finally:
            await cache.close()

    for_a, for_b, during_swap, begun_before = asyncio.run(go())
    assert for_a == ["B"] and for_b == ["A"]
    for body in (during_swap, begun_before):
        assert body is not None and orjson.loads(body)["stale"] is True


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl"])
def test_the_start_up_warns_of_an_eviction_policy_that_drops_the_registry(
    policy: str, bundles: dict[str, Path], tmp_path: Path
) -> None:
    """At its memory bound a Redis under allkeys-* may evict the keys without expiry (the version
    registry, the fleet's arms); under volatile-ttl the profiles, which expire soonest, go and those stay."""
    import logging

    from fastapi.testclient import TestClient

    from loadtest.procs import Redis
    from service.main import create_app
    from service.stale import REGISTRY_KEY
    from tests.serving import settings_for

    records: list[logging.LogRecord] = []
    collector = logging.Handler()
    collector.emit = records.append  # type: ignore[method-assign,assignment]
    with Redis(workdir=tmp_path, args=["--maxmemory", "4mb", "--maxmemory-policy", policy]) as server:
        app = create_app(settings_for(bundles["a"], None, redis_url=server.url))  # configures the service's logging
        logging.getLogger("utpm.service").addHandler(collector)
        try:
            with TestClient(app):
                pass
        finally:
            logging.getLogger("utpm.service").removeHandler(collector)
        warned = [r.getMessage() for r in records if "maxmemory-policy" in r.getMessage()]
        assert bool(warned) == (policy == "allkeys-lru"), warned
        direct = redis.Redis(port=server.port)
        assert direct.exists(REGISTRY_KEY)
        for i in range(4000):  # ~8 MB of profile-like records with a TTL: twice the bound
            direct.set(f"utpm:profile:p2:v:u{i}", b"x" * 2000, px=3_600_000)
        assert int(direct.info("stats")["evicted_keys"]) > 0
        if policy == "volatile-ttl":
            assert direct.exists(REGISTRY_KEY)  # no expiry: never a candidate
