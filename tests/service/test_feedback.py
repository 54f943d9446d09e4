"""Click feedback -> the paper's QC and DCTR per arm (service.feedback, service.online_metrics).

The fixture is small enough to compute by hand: two champion users and two challenger users, each
with a 5-tag profile p0..p4 served by their arm, impressions partly outside the profile, and one
user's impressions split over two calls (the distinct counts must not double count).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from service.ab import assign
from service.config import hash_key
from service.main import create_app
from service.online_metrics import Totals, difference, user_day
from tests.conftest import RedisServer
from tests.serving import ADMIN_KEYS, API_KEY, USER, assert_problem, settings_for

WRITE_KEY = "test-write-key"
KEYS = f"{ADMIN_KEYS},write:{hash_key(WRITE_KEY)}"
WRITE = {"X-API-Key": WRITE_KEY}
OUT = "zz-not-in-any-profile"


def test_user_day_and_totals_by_hand() -> None:
    ud, outside = user_day(["a", "b", "c"], [(["a", "x"], True), (["b", "a"], False), (["y"], True)])
    assert (ud.clicked, ud.browsed, outside) == ({"a"}, {"a", "b"}, 2)
    t = Totals()
    t.add_user_day((0, 0), (1, 2))
    t.add_user_day((1, 2), (2, 3))  # the same user-day grows: still one user-day
    t.add_user_day((0, 0), (0, 1))
    assert (t.users, t.sum_c, t.sum_b, t.sum_cc, t.sum_bb, t.sum_cb) == (2, 2, 4, 4, 10, 6)
    assert t.qc == 1.0 and t.dctr == 0.5


def pick_users(challenger: str) -> dict[str, list[str]]:
    """Two users of each arm at share 0.5 (found by the same hash the service uses)."""
    arms: dict[str, list[str]] = {"champion": [], "challenger": []}
    i = 0
    while min(len(v) for v in arms.values()) < 2:
        user = f"fb-{i}"
        arm = assign(challenger, user, 0.5)
        if len(arms[arm]) < 2:
            arms[arm].append(user)
        i += 1
    return arms


def impressions(p: list[str]) -> dict[str, list[list[dict[str, Any]]]]:
    """Per user slot, the calls' impressions; expected (clicked, browsed) distinct in-profile tags in comments."""
    return {
        # champion 1: browsed {p0,p1,p2}, clicked {p0,p1}; then p2 clicked in a second call -> (3, 3)
        "c1": [
            [
                {"tags": [p[0], p[1]], "clicked": True},
                {"tags": [p[1], p[2]]},
                {"tags": [OUT], "clicked": True},
            ],
            [{"tags": [p[2], OUT], "clicked": True}, {"tags": [p[0]], "clicked": True}],
        ],
        # champion 2: nothing clicked in the profile -> (0, 2)
        "c2": [[{"tags": [p[0]]}, {"tags": [p[3]]}, {"tags": [OUT], "clicked": True}]],
        # challenger 1: -> (1, 2)
        "x1": [[{"tags": [p[0]], "clicked": True}, {"tags": [p[1]]}]],
        # challenger 2: -> (1, 1); tags stripped as profile values are (a blank one is no tag)
        "x2": [[{"tags": [f" {p[4]} ", " "], "clicked": True}, {"tags": [p[4]], "clicked": True}]],
    }


@pytest.fixture()
def feedback_redis(redis_server: RedisServer) -> str:
    url = redis_server.url.rsplit("/", 1)[0] + "/7"  # a database of its own: aggregates start empty
    redis.Redis.from_url(url).flushdb()
    return url


def run_fixture(clients: list[TestClient]) -> dict[str, Any]:
    """Profiles for the four users, their feedback (calls spread over `clients`), and the summary."""
    c = clients[0]
    challenger = c.get("/experiment").json()["challenger"]["model_version"]
    users = pick_users(challenger)
    slots = {"c1": users["champion"][0], "c2": users["champion"][1], "x1": users["challenger"][0]}
    slots["x2"] = users["challenger"][1]
    calls: list[list[dict[str, Any]]] = [[], []]
    for slot, user in slots.items():
        served = c.post("/profile", json={"user_id": user, "features": USER, "k": 5}, headers=WRITE).json()
        tags = [t["tag"] for t in served["tags"]]
        for n, items in enumerate(impressions(tags)[slot]):
            calls[n].append({"user_id": user, "model_version": served["model_version"], "k": 5, "items": items})
    for n, events in enumerate(calls):
        r = clients[n % len(clients)].post("/feedback", json={"events": events}, headers=WRITE)
        assert r.status_code == 200, r.text
        assert r.json()["counted"] == len(events)
    return c.get("/feedback/summary").json()


def check_hand_computed(summary: dict[str, Any]) -> None:
    champ, chall = summary["arms"]["champion"]["totals"], summary["arms"]["challenger"]["totals"]
    # champion: user-days (3 clicked, 3 browsed) and (0, 2); challenger: (1, 2) and (1, 1)
    assert (champ["users"], champ["sum_c"], champ["sum_b"], champ["events"], champ["items"]) == (2, 3, 5, 3, 8)
    assert (champ["clicked_items"], champ["outside_tags"], chall["clicked_items"], chall["outside_tags"]) == (
        5,
        3,
        3,
        0,
    )
    assert (chall["users"], chall["sum_c"], chall["sum_b"], chall["events"], chall["items"]) == (2, 2, 3, 2, 4)
    assert champ["qc"] == 1.5 and champ["dctr"] == pytest.approx(3 / 5)
    assert chall["qc"] == 1.0 and chall["dctr"] == pytest.approx(2 / 3)
    diff = summary["difference"]
    assert diff["qc"]["diff"] == pytest.approx(-0.5) and diff["dctr"]["diff"] == pytest.approx(2 / 3 - 3 / 5)
    # QC variances of the means: champion ((3-1.5)^2 + (0-1.5)^2) / 1 / 2 = 2.25, challenger 0
    half = 1.959963984540054 * math.sqrt(2.25)
    assert diff["qc"]["ci95"] == pytest.approx([-0.5 - half, -0.5 + half])
    lo, hi = diff["dctr"]["ci95"]
    assert lo < diff["dctr"]["diff"] < hi


def ab_settings(bundles: dict[str, Path], url: str | None, **kw: Any) -> Any:
    return settings_for(
        bundles["a"],
        None,
        redis_url=url,
        auth_keys=KEYS,
        ab_challenger_bundle=bundles["b"],
        ab_challenger_share=0.5,
        **kw,
    )


@pytest.fixture()
def two_replicas(bundles: dict[str, Path], feedback_redis: str) -> Iterator[list[TestClient]]:
    with (
        TestClient(create_app(ab_settings(bundles, feedback_redis))) as one,
        TestClient(create_app(ab_settings(bundles, feedback_redis))) as two,
    ):
        yield [one, two]


def test_feedback_from_two_replicas_matches_the_hand_computed_qc_and_dctr(
    two_replicas: list[TestClient], bundles: dict[str, Path], feedback_redis: str
) -> None:
    summary = run_fixture(two_replicas)
    assert summary["store"] == "redis"
    check_hand_computed(summary)
    metrics = two_replicas[1].get("/metrics").text
    champion = summary["arms"]["champion"]["model_version"]
    assert f'utpm_feedback_qc{{arm="champion",model_version="{champion}"}} 1.5' in metrics
    assert 'utpm_feedback_events_total{result="counted"}' in metrics
    # a restarted replica sees the same aggregates (they live in Redis)
    with TestClient(create_app(ab_settings(bundles, feedback_redis))) as fresh:
        check_hand_computed(fresh.get("/feedback/summary").json())


def test_bad_feedback_is_refused_and_not_counted(two_replicas: list[TestClient]) -> None:
    c = two_replicas[0]
    before = c.get("/feedback/summary").json()
    good = {"user_id": "u", "items": [{"tags": ["a"], "clicked": True}]}
    assert_problem(c.post("/feedback", json={"events": [good]}), 401, "unauthorized")
    bad_bodies = [
        {"events": []},
        {"events": [good, {"user_id": "u", "items": []}]},
        {"events": [{**good, "items": [{"tags": "a"}]}]},
        {"events": [{**good, "colour": "red"}]},
        {"events": [{**good, "day": "yesterday"}]},
        {"events": [{**good, "k": 0}]},
        {"events": [{**good, "k": "5"}]},
        {"events": [{**good, "items": [{"tags": ["a"], "clicked": "yes"}]}]},
    ]
    for body in bad_bodies:
        assert_problem(c.post("/feedback", json=body, headers=WRITE), 422, "validation")
    r = c.post("/feedback", json={"events": [good, {**good, "model_version": "not-served"}]}, headers=WRITE)
    assert "not-served" in assert_problem(r, 422, "invalid_input")["detail"]
    r = c.post("/feedback", json={"events": [{**good, "day": "2999-01-01"}]}, headers=WRITE)
    assert "future" in assert_problem(r, 422, "invalid_input")["detail"]
    assert c.get("/feedback/summary").json() == before
    # a repeated parameter was the last one given (`?days=7&days=1` answered one day)
    twice = assert_problem(c.get("/feedback/summary?days=7&days=1"), 422, "validation")
    assert twice["detail"] == "days: given 2 times (7, 1); give it once", twice
    # well-formed, but no profile was served to this user: received, not counted
    r = c.post("/feedback", json={"events": [{**good, "user_id": "never-profiled"}]}, headers=WRITE)
    assert r.json() == {"received": 1, "counted": 0, "no_profile": 1, "no_profile_users": ["never-profiled"]}


def test_embedded_mode_keeps_the_same_aggregates_in_process(bundles: dict[str, Path]) -> None:
    with TestClient(create_app(ab_settings(bundles, None))) as c:
        summary = run_fixture([c])
    assert summary["store"] == "memory"
    check_hand_computed(summary)


def test_difference_needs_two_user_days_per_arm_for_an_interval() -> None:
    one = Totals(users=1, sum_c=1, sum_b=2, sum_cc=1, sum_bb=4, sum_cb=2)
    d = difference(one, one)
    assert d["qc"]["diff"] == 0 and d["qc"]["ci95"] is None


def test_feedback_while_redis_is_down_is_a_503_and_the_service_recovers(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    from loadtest.procs import Redis

    with (
        Redis(workdir=tmp_path) as redis,
        TestClient(create_app(ab_settings(bundles, redis.url, near_cache_ttl_ms=0))) as c,
    ):
        served = c.post("/profile", json={"user_id": "down", "features": USER, "k": 5}, headers=WRITE).json()
        event = {"user_id": "down", "k": 5, "items": [{"tags": [served["tags"][0]["tag"]], "clicked": True}]}
        redis.stop()
        assert_problem(c.post("/feedback", json={"events": [event]}, headers=WRITE), 503, "cache_unavailable")
        assert c.get("/metrics").status_code == 200  # the gauges keep their last values
        redis.start()  # an empty Redis (no persistence): the profile is gone, the event is received, not counted
        r = c.post("/feedback", json={"events": [event]}, headers=WRITE)
        assert r.status_code == 200 and r.json()["no_profile"] == 1, r.text


def test_feedback_writes_count_toward_and_obey_the_circuit_breaker(bundles: dict[str, Path], tmp_path: Path) -> None:
    """The near cache answers the profile reads, so only the feedback store touches Redis: its failures
    must open the breaker, an open breaker must refuse it without a round trip, a probe closes it."""
    from loadtest.procs import Redis
    from service.breaker import BREAKER_BACKOFF_S, BREAKER_FAILURES
    from service.cache import breaker_of

    with (
        Redis(workdir=tmp_path) as redis_proc,
        TestClient(create_app(ab_settings(bundles, redis_proc.url, near_cache_ttl_ms=600_000))) as c,
    ):
        breaker = breaker_of(c.app.state.service.cache)  # type: ignore[attr-defined]
        assert breaker is not None
        served = c.post("/profile", json={"user_id": "brk", "features": USER, "k": 5}, headers=WRITE).json()
        event = {"user_id": "brk", "k": 5, "items": [{"tags": [served["tags"][0]["tag"]], "clicked": True}]}
        redis_proc.stop()
        for _ in range(BREAKER_FAILURES):
            assert_problem(c.post("/feedback", json={"events": [event]}, headers=WRITE), 503, "cache_unavailable")
        assert breaker.state == "open"
        redis_proc.start()  # back, but the breaker is still open: refused at once, nothing written
        refused = c.post("/feedback", json={"events": [event]}, headers=WRITE)
        assert "circuit breaker open" in assert_problem(refused, 503, "cache_unavailable")["detail"]
        assert int(refused.headers["retry-after"]) >= 1
        assert redis.Redis.from_url(redis_proc.url).dbsize() == 0
        time.sleep(BREAKER_BACKOFF_S * 1.5)  # past the backoff: this call is the probe, and it succeeds
        r = c.post("/feedback", json={"events": [event]}, headers=WRITE)
        assert r.status_code == 200 and r.json()["counted"] == 1, r.text
        assert breaker.state == "closed"


@pytest.mark.parametrize("store", ["redis", "memory"])
def test_late_feedback_counts_once_or_is_refused(store: str, bundles: dict[str, Path], feedback_redis: str) -> None:
    """Feedback for a past day is taken while that user-day's sets live, so a retry of it cannot count
    the user's tags twice; older days get a 422 naming the window, and nothing of the call is counted."""
    import datetime as dt

    from service.feedback import LATE_DAYS, USER_SET_TTL_S

    today = dt.datetime.now(dt.UTC).date()
    days = [(today + dt.timedelta(days=d)).isoformat() for d in range(-LATE_DAYS, 2)]  # every day taken
    with TestClient(create_app(ab_settings(bundles, feedback_redis if store == "redis" else None))) as c:
        user = f"late-{store}"
        served = c.post("/profile", json={"user_id": user, "features": USER, "k": 5}, headers=WRITE).json()
        tags = [t["tag"] for t in served["tags"]]
        arm = served["arm"]
        event = {"user_id": user, "k": 5, "items": [{"tags": tags[:2], "clicked": True}, {"tags": tags[2:4]}]}

        def oldest_day() -> dict[str, Any]:
            by_day = c.get(f"/feedback/summary?days={LATE_DAYS + 1}").json()["arms"][arm]["by_day"]
            return next(d for d in by_day if d["day"] == days[0])

        too_old = (today - dt.timedelta(days=LATE_DAYS + 1)).isoformat()
        r = c.post("/feedback", json={"events": [event, {**event, "day": too_old}]}, headers=WRITE)
        assert too_old in assert_problem(r, 422, "invalid_input")["detail"]
        for day in days:  # the oldest day first, then every later one: a memory store keeps them all
            assert c.post("/feedback", json={"events": [{**event, "day": day}]}, headers=WRITE).json()["counted"] == 1
        assert (oldest_day()["sum_c"], oldest_day()["sum_b"]) == (2, 4)
        again = c.post("/feedback", json={"events": [{**event, "day": days[0]}]}, headers=WRITE)  # a late retry
        assert again.json()["counted"] == 1
        assert (oldest_day()["sum_c"], oldest_day()["sum_b"], oldest_day()["events"]) == (2, 4, 2)
        if store == "redis":  # the sets outlive the window in which their day takes writes
            client = redis.Redis.from_url(feedback_redis)
            ttls = [client.ttl(k) for k in client.scan_iter(f"utpm:fb:v1:*:u:{user}:*")]
            assert ttls and min(ttls) >= USER_SET_TTL_S - 60 >= (LATE_DAYS + 2) * 86_400 - 60, ttls


def test_forgetting_reaches_every_day_whose_sets_may_live() -> None:
    """Day D takes its last event before D + LATE_DAYS + 1 and its sets live USER_SET_TTL_S after that
    event, so on day t sets of every D >= t - LATE_DAYS - USER_SET_TTL_S days may exist (up to t + 1)."""
    import datetime as dt

    from service.feedback import LATE_DAYS, USER_SET_TTL_S, live_set_days, taken_days

    today = dt.date(2026, 12, 4)
    days = live_set_days(today)
    oldest_possible = today - dt.timedelta(days=LATE_DAYS + USER_SET_TTL_S // 86_400)
    assert days[0] <= oldest_possible.isoformat() and days[-1] == taken_days(today)[1].isoformat()
    assert len(days) == len(set(days)) and days == sorted(days)  # consecutive ISO days, each once


def test_a_redis_that_refuses_scripts_refuses_feedback_without_taking_the_cache_down(
    bundles: dict[str, Path], redis_server: RedisServer
) -> None:
    """Profiles work on a Redis whose ACL refuses scripts (pipelined writes); feedback cannot (its sums
    move atomically in a script). Its refusals are Redis answering, not Redis down: the circuit breaker
    the cache shares must stay closed, or feedback traffic would fail every GET."""
    from service.breaker import BREAKER_FAILURES

    direct = redis.Redis(port=redis_server.port)
    direct.acl_setuser("nofbscripts", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-@scripting"])
    url = f"redis://nofbscripts:pw@127.0.0.1:{redis_server.port}/7"
    try:
        with TestClient(create_app(ab_settings(bundles, url, near_cache_ttl_ms=0))) as c:
            served = c.post("/profile", json={"user_id": "noscript", "features": USER, "k": 5}, headers=WRITE).json()
            event = {"user_id": "noscript", "k": 5, "items": [{"tags": [served["tags"][0]["tag"]], "clicked": True}]}
            # many at once, as a recall layer's log shipper sends them: no cache read between the refusals
            with ThreadPoolExecutor(8) as pool:
                answers = list(
                    pool.map(
                        lambda _: c.post("/feedback", json={"events": [event]}, headers=WRITE),
                        range(4 * BREAKER_FAILURES),
                    )
                )
            for r in answers:
                assert "script" in assert_problem(r, 503, "feedback_unavailable")["detail"]
            assert c.get("/profile/noscript").status_code == 200  # the cache is up: the breaker stayed closed
            assert c.get("/readyz").json()["cache"]["breaker"] == "closed"
    finally:
        direct.acl_deluser("nofbscripts")


def test_late_feedback_for_a_dropped_challenger_still_counts(bundles: dict[str, Path]) -> None:
    """Impressions served by a challenger reach the service after the experiment is stopped (log
    shipping lags): they count for that challenger while its profiles are cached, as after a promote."""
    admin = {"x-api-key": API_KEY}
    with TestClient(create_app(settings_for(bundles["a"], None, auth_keys=KEYS))) as c:
        challenger = c.post("/admin/challenger", json={"bundle": "b", "share": 1.0}, headers=admin).json()
        version = challenger["challenger"]["model_version"]
        served = c.post("/profile", json={"user_id": "lag", "features": USER, "k": 5}, headers=WRITE).json()
        assert served["model_version"] == version
        assert c.delete("/admin/challenger", headers=admin).status_code == 200
        event = {"user_id": "lag", "model_version": version, "k": 5, "items": [{"tags": [served["tags"][0]["tag"]]}]}
        r = c.post("/feedback", json={"events": [event]}, headers=WRITE)
        assert r.status_code == 200 and r.json()["counted"] == 1, r.text
        by_version = c.get(f"/feedback/summary?champion={version}", headers=WRITE).json()
        assert by_version["arms"]["champion"]["totals"]["users"] == 1
