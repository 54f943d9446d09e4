"""Click feedback aggregated into the paper's QC and DCTR per model version and day (service.online_metrics).

`POST /feedback` reports, per user, the tags of browsed items and which were clicked. Each event is
restricted to the tags of the profile served to that user: the cached profile under the event's
model version (its first `k` tags, the size the recall layer asked for). An event whose user has no
cached profile under that version cannot be restricted and is not counted (`no_profile`).

Stores:
- `RedisFeedbackStore` (with UTPM_REDIS_URL): per user-day two sets (in-profile browsed and clicked
  tags), and per (day, version) one hash of sums (`online_metrics.Totals`). A Lua script adds an
  event's tags and moves the sums by the change in the user's distinct counts, atomically, so any
  number of replicas add up and a restart loses nothing. Re-sending an event (a retry) leaves QC and
  DCTR unchanged: the sets absorb it; only the event and item counters grow. Keys of one (day,
  version) share a hash tag, so on a cluster the script's keys live in one slot.
- `MemoryFeedbackStore` (embedded cache mode): the same sums in process memory, per replica, lost
  on restart; documented in docs/serving.md.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge

from service.breaker import CircuitBreaker
from service.cache import CacheUnavailable, ProfileCache, breaker_of, profile_key, scripts_refused
from service.errors import RETRY_AFTER_S, FeedbackUnavailable
from service.online_metrics import Totals, UserDay, difference, user_day
from service.profile_record import CorruptRecord, cached_response
from service.stale import redis_client_of

log = logging.getLogger("utpm.service")

KEY_PREFIX = "utpm:fb:v1"
# On a cluster, events' scripts in flight at once (one call each; a chunk at a time bounds the connections).
CLUSTER_SCRIPTS_AT_ONCE = 64
# Feedback is taken for a UTC day from the day before it (clock skew) to LATE_DAYS days after it (late logs).
LATE_DAYS = 2
# A user-day's sets must outlive the gap between any two writes for that day (at most LATE_DAYS + 2
# days, the window above): a set that expired between them would count the user's tags again.
USER_SET_TTL_S = (LATE_DAYS + 2) * 86_400
# The sums are the experiment's record: kept long enough to compare any recent period.
TOTALS_TTL_S = 400 * 86_400

# KEYS: totals hash, browsed set, clicked set. ARGV: set ttl, totals ttl, events, items,
# clicked items, outside tags, number of browsed tags, browsed tags..., clicked tags...
_ADD_SCRIPT = """
local b0 = redis.call('SCARD', KEYS[2])
local c0 = redis.call('SCARD', KEYS[3])
local nb = tonumber(ARGV[7])
if nb > 0 then redis.call('SADD', KEYS[2], unpack(ARGV, 8, 7 + nb)) end
if #ARGV > 7 + nb then redis.call('SADD', KEYS[3], unpack(ARGV, 8 + nb, #ARGV)) end
local b1 = redis.call('SCARD', KEYS[2])
local c1 = redis.call('SCARD', KEYS[3])
if b1 > 0 then redis.call('EXPIRE', KEYS[2], ARGV[1]) end
if c1 > 0 then redis.call('EXPIRE', KEYS[3], ARGV[1]) end
local h = KEYS[1]
if b0 == 0 and b1 > 0 then redis.call('HINCRBY', h, 'users', 1) end
redis.call('HINCRBY', h, 'events', ARGV[3])
redis.call('HINCRBY', h, 'items', ARGV[4])
redis.call('HINCRBY', h, 'clicked_items', ARGV[5])
redis.call('HINCRBY', h, 'outside_tags', ARGV[6])
redis.call('HINCRBY', h, 'sum_c', c1 - c0)
redis.call('HINCRBY', h, 'sum_b', b1 - b0)
redis.call('HINCRBY', h, 'sum_cc', c1 * c1 - c0 * c0)
redis.call('HINCRBY', h, 'sum_bb', b1 * b1 - b0 * b0)
redis.call('HINCRBY', h, 'sum_cb', c1 * b1 - c0 * b0)
redis.call('EXPIRE', h, ARGV[2])
return {c1, b1}
"""


@dataclass
class Counted:
    """One event restricted to the served profile, ready to add."""

    day: str
    version: str
    user_id: str
    tags: UserDay
    items: int
    clicked_items: int
    outside: int


def _hash_tag(day: str, version: str) -> str:
    return f"{KEY_PREFIX}:{{{day}:{version}}}"


class FeedbackStore(Protocol):
    kind: str

    async def add(self, counted: Sequence[Counted], no_profile: dict[tuple[str, str], int]) -> None: ...

    async def totals(self, day: str, version: str) -> Totals: ...

    async def forget(self, user_ids: Sequence[str], versions: Sequence[str], days: Sequence[str]) -> int:
        """Remove the users' per-user sets under these versions and days (the sums stay); how many were there."""
        ...


class MemoryFeedbackStore:
    kind = "memory"

    def __init__(self) -> None:
        self._totals: dict[tuple[str, str], Totals] = {}
        self._users: dict[tuple[str, str, str], UserDay] = {}

    async def add(self, counted: Sequence[Counted], no_profile: dict[tuple[str, str], int]) -> None:
        for c in counted:
            totals = self._totals.setdefault((c.day, c.version), Totals())
            seen = self._users.setdefault((c.day, c.version, c.user_id), UserDay(set(), set()))
            before = (len(seen.clicked), len(seen.browsed))
            seen.browsed |= c.tags.browsed
            seen.clicked |= c.tags.clicked
            totals.add_user_day(before, (len(seen.clicked), len(seen.browsed)))
            totals.events += 1
            totals.items += c.items
            totals.clicked_items += c.clicked_items
            totals.outside_tags += c.outside
        for key, n in no_profile.items():
            self._totals.setdefault(key, Totals()).no_profile += n
        # the sets of days that can take no more feedback go (their sums stay)
        first = taken_days(dt.datetime.now(dt.UTC).date())[0].isoformat()
        if any(d < first for d in {d for d, _, _ in self._users}):
            self._users = {k: v for k, v in self._users.items() if k[0] >= first}

    async def totals(self, day: str, version: str) -> Totals:
        return Totals().add(self._totals.get((day, version), Totals()))

    async def forget(self, user_ids: Sequence[str], versions: Sequence[str], days: Sequence[str]) -> int:
        users = set(user_ids)  # every version and day this process holds: it has them all at hand
        gone = [key for key in self._users if key[2] in users]
        for key in gone:
            del self._users[key]
        return 2 * len(gone)  # a browsed and a clicked set, as Redis counts them


class RedisFeedbackStore:
    """Shares the profile cache's client and circuit breaker: an open breaker fails these calls at
    once, and their failures and successes count toward it like the profile reads and writes."""

    kind = "redis"

    def __init__(self, client: Any, breaker: CircuitBreaker | None = None, cluster: bool = False) -> None:
        self.client = client
        self.breaker = breaker or CircuitBreaker()
        self.cluster = cluster
        self._script = client.register_script(_ADD_SCRIPT)

    def _check(self) -> None:
        if not self.breaker.allow():  # Redis known down: no socket touched, no timeout waited
            raise CacheUnavailable("feedback store: circuit breaker open", self.breaker.retry_after_s())

    def _failed(self, e: BaseException) -> CacheUnavailable:
        self.breaker.failure()
        retry = self.breaker.retry_after_s() if self.breaker.state == "open" else 0
        return CacheUnavailable(f"feedback store: {type(e).__name__}", retry)

    async def add(self, counted: Sequence[Counted], no_profile: dict[tuple[str, str], int]) -> None:
        from redis.exceptions import RedisError, ResponseError

        self._check()
        calls: list[tuple[list[str], list[int | str]]] = []
        for c in counted:
            tag = _hash_tag(c.day, c.version)
            user = f"{tag}:u:{c.user_id}"
            browsed, clicked = sorted(c.tags.browsed), sorted(c.tags.clicked)
            args: list[int | str] = [USER_SET_TTL_S, TOTALS_TTL_S, 1, c.items, c.clicked_items, c.outside, len(browsed)]
            calls.append(([f"{tag}:totals", f"{user}:b", f"{user}:c"], [*args, *browsed, *clicked]))
        try:
            if self.cluster:  # redis-py's cluster pipeline runs no scripts: each event's is its own call
                for lo in range(0, len(calls), CLUSTER_SCRIPTS_AT_ONCE):
                    chunk = calls[lo : lo + CLUSTER_SCRIPTS_AT_ONCE]
                    await asyncio.gather(*(self._script(keys=keys, args=args) for keys, args in chunk))
            async with self.client.pipeline(transaction=False) as pipe:
                if not self.cluster:
                    for keys, args in calls:
                        await self._script(keys=keys, args=args, client=pipe)
                for (day, version), n in no_profile.items():
                    pipe.hincrby(f"{_hash_tag(day, version)}:totals", "no_profile", n)
                    pipe.expire(f"{_hash_tag(day, version)}:totals", TOTALS_TTL_S)
                await pipe.execute()
        except ResponseError as e:  # Redis is up and said no: not a failure for the breaker the cache shares
            self.breaker.success()
            hint = " (feedback needs EVALSHA: allow @scripting for this user)" if scripts_refused(e) else ""
            raise FeedbackUnavailable(
                f"Redis refused the feedback script: {e}{hint}", {"Retry-After": str(RETRY_AFTER_S)}
            ) from None
        except (RedisError, OSError, TimeoutError) as e:
            raise self._failed(e) from None
        self.breaker.success()

    async def totals(self, day: str, version: str) -> Totals:
        from redis.exceptions import RedisError

        self._check()
        try:
            raw = await self.client.hgetall(f"{_hash_tag(day, version)}:totals")
        except (RedisError, OSError, TimeoutError) as e:
            raise self._failed(e) from None
        self.breaker.success()
        return Totals.from_mapping({k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()})

    async def forget(self, user_ids: Sequence[str], versions: Sequence[str], days: Sequence[str]) -> int:
        """One DEL per (day, version), whose keys share a slot, in one pipeline."""
        from redis.exceptions import RedisError

        self._check()
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for day in days:
                    for version in versions:
                        tag = _hash_tag(day, version)
                        pipe.delete(*(f"{tag}:u:{u}:{kind}" for u in user_ids for kind in "bc"))
                removed = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as e:
            raise self._failed(e) from None
        self.breaker.success()
        return int(sum(removed))


def make_store(cache: ProfileCache) -> FeedbackStore:
    """Redis when the profile cache is Redis (the same client), else process memory."""
    client = redis_client_of(cache)
    if client is None:
        return MemoryFeedbackStore()
    return RedisFeedbackStore(client, breaker_of(cache), cluster=cache.kind == "redis-cluster")


def today() -> str:
    return dt.datetime.now(dt.UTC).date().isoformat()


def taken_days(today: dt.date) -> tuple[dt.date, dt.date]:
    """The first and the last UTC day `POST /feedback` takes events for on `today`."""
    return today - dt.timedelta(days=LATE_DAYS), today + dt.timedelta(days=1)


def live_set_days(today: dt.date) -> list[str]:
    """The days whose per-user sets may still exist on `today`: a day takes events until LATE_DAYS days
    after it, and its sets live USER_SET_TTL_S after the last, so LATE_DAYS + 1 + that many days back."""
    back = LATE_DAYS + 1 + math.ceil(USER_SET_TTL_S / 86_400)
    return [(today + dt.timedelta(days=d)).isoformat() for d in range(-back, 2)]


def profile_tags(record: bytes | None, k: int) -> list[str] | None:
    """The first `k` tags of a cached profile record; None when absent or unreadable."""
    if record is None:
        return None
    try:
        body = orjson.loads(cached_response(record, k))
    except (CorruptRecord, orjson.JSONDecodeError):
        return None
    return [t["tag"] for t in body.get("tags", [])]


class FeedbackMetrics:
    """Prometheus view of the aggregates: today's QC/DCTR per arm, refreshed on each scrape."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "utpm_feedback_events_total",
            "Feedback events received by this replica: counted, or not (no_profile: no cached profile to restrict to).",
            ["result"],
            registry=registry,
        )
        labels = ["arm", "model_version"]
        self.qc = Gauge(
            "utpm_feedback_qc", "Today's mean QC per user-day (UTC day), all replicas.", labels, registry=registry
        )
        self.dctr = Gauge(
            "utpm_feedback_dctr",
            "Today's DCTR (distinct clicked / distinct browsed in-profile tags).",
            labels,
            registry=registry,
        )
        self.user_days = Gauge(
            "utpm_feedback_user_days", "Today's user-days with in-profile browsed tags.", labels, registry=registry
        )
        self.clicked = Gauge(
            "utpm_feedback_clicked_tags", "Today's sum of distinct in-profile clicked tags.", labels, registry=registry
        )
        self.browsed = Gauge(
            "utpm_feedback_browsed_tags", "Today's sum of distinct in-profile browsed tags.", labels, registry=registry
        )
        self.arm_info = Gauge(
            "utpm_ab_arm_info",
            "The A/B arms served by this replica; the value is the arm's share of users.",
            ["arm", "model_version", "model"],
            registry=registry,
        )

    def show(self, arms: dict[str, tuple[str, Totals]]) -> None:
        for gauge in (self.qc, self.dctr, self.user_days, self.clicked, self.browsed):
            gauge.clear()
        for arm, (version, t) in arms.items():
            self.qc.labels(arm, version).set(t.qc if t.qc is not None else float("nan"))
            self.dctr.labels(arm, version).set(t.dctr if t.dctr is not None else float("nan"))
            self.user_days.labels(arm, version).set(t.users)
            self.clicked.labels(arm, version).set(t.sum_c)
            self.browsed.labels(arm, version).set(t.sum_b)


class Feedback:
    """What the feedback routes and /metrics use: restrict, count, add up, summarise."""

    def __init__(self, cache: ProfileCache, registry: CollectorRegistry) -> None:
        self.cache = cache
        self.store = make_store(cache)
        self.metrics = FeedbackMetrics(registry)

    async def record(self, events: Sequence[tuple[str, str, str, int, list[tuple[list[str], bool]]]]) -> dict[str, Any]:
        """Events as (day, version, user id, k, [(tags, clicked)]): read the served profiles, restrict, add."""
        records = await asyncio.gather(*(self.cache.get(profile_key(v, u)) for _, v, u, _, _ in events))
        counted: list[Counted] = []
        no_profile: dict[tuple[str, str], int] = {}
        missing: list[str] = []
        for (day, version, user, k, items), record in zip(events, records, strict=True):
            tags = profile_tags(record, k)
            if tags is None:
                no_profile[(day, version)] = no_profile.get((day, version), 0) + 1
                missing.append(user)
                continue
            ud, outside = user_day(tags, items)
            counted.append(Counted(day, version, user, ud, len(items), sum(1 for _, c in items if c), outside))
        await self.store.add(counted, no_profile)
        self.metrics.events.labels("counted").inc(len(counted))
        if missing:
            self.metrics.events.labels("no_profile").inc(len(missing))
        return {
            "received": len(events),
            "counted": len(counted),
            "no_profile": len(missing),
            "no_profile_users": missing[:100],
        }

    async def forget(self, user_ids: Sequence[str], versions: Sequence[str]) -> int:
        """Remove the users' per-user sets of browsed and clicked tags under `versions`, on every day
        that may still hold them; the aggregates (no user ids) stay. How many sets were removed."""
        return await self.store.forget(user_ids, versions, live_set_days(dt.datetime.now(dt.UTC).date()))

    async def summary(self, arms: dict[str, str], days: list[str]) -> dict[str, Any]:
        """Per arm ({arm: version}) the totals of each day and of all `days`, and challenger - champion."""
        out: dict[str, Any] = {}
        totals: dict[str, Totals] = {}
        for arm, version in arms.items():
            per_day = await asyncio.gather(*(self.store.totals(d, version) for d in days))
            total = Totals()
            for t in per_day:
                total = total.add(t)
            totals[arm] = total
            out[arm] = {
                "model_version": version,
                "totals": total.summary(),
                "by_day": [
                    {"day": d, **t.summary()} for d, t in zip(days, per_day, strict=True) if t.events or t.no_profile
                ],
            }
        result: dict[str, Any] = {"store": self.store.kind, "days": days, "arms": out}
        if "champion" in totals and "challenger" in totals:
            result["difference"] = difference(totals["champion"], totals["challenger"])
        return result

    def show_arms(self, described: dict[str, Any]) -> None:
        """`Experiment.describe()` into utpm_ab_arm_info."""
        self.metrics.arm_info.clear()
        share = float(described["challenger_share"])
        for arm, weight in (("champion", 1.0 - share), ("challenger", share)):
            info = described.get(arm)
            if info:
                self.metrics.arm_info.labels(arm, info["model_version"], info["model"]).set(weight)

    async def refresh_metrics(self, arms: dict[str, str]) -> None:
        """Today's per-arm figures into the gauges (on a scrape); a store that cannot answer leaves them."""
        breaker = breaker_of(self.cache)
        if breaker is not None and breaker.state != "closed":  # Redis known down: the scrape answers at once
            return
        day = today()
        try:
            shown = {arm: (v, await self.store.totals(day, v)) for arm, v in arms.items()}
        except CacheUnavailable as e:
            log.warning("feedback gauges not refreshed: %s", e)
            return
        self.metrics.show(shown)
