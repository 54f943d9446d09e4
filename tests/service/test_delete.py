"""DELETE /profile/{user_id} and POST /profiles/forget: users' cached profiles forgotten under every version
that may serve them. Real redis-server (and the embedded cache), real bundles, the stale fallback on."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from service.config import hash_key
from service.main import create_app
from tests.conftest import RedisServer
from tests.serving import ADMIN_KEYS, API_KEY, assert_problem, post, settings_for

DELETE_DB = 8
WRITE_KEY = "test-delete-write-key"
READ_KEY = "test-delete-read-key"
KEYS = f"{ADMIN_KEYS},write:{hash_key(WRITE_KEY)},read:{hash_key(READ_KEY)}"
WRITE = {"X-API-Key": WRITE_KEY}
READ = {"X-API-Key": READ_KEY}


def service(bundles: dict[str, Path], redis_server: RedisServer) -> tuple[redis.Redis, TestClient]:
    """A database of its own, emptied, and the service on it with write and read keys."""
    store = redis.Redis(port=redis_server.port, db=DELETE_DB)
    store.flushdb()
    url = f"redis://127.0.0.1:{redis_server.port}/{DELETE_DB}"
    return store, TestClient(create_app(settings_for(bundles["a"], None, redis_url=url, auth_keys=KEYS)))


def test_delete_forgets_the_user_under_every_served_and_registered_version(
    bundles: dict[str, Path], redis_server: RedisServer
) -> None:
    store, c = service(bundles, redis_server)
    with c:
        served_a = post(c, "gone", WRITE).json()
        v_a = served_a["model_version"]
        post(c, "kept", WRITE)
        v_b = c.post("/admin/reload", json={"bundle": "b"}, headers={"x-api-key": API_KEY}).json()["model_version"]
        served_b = post(c, "gone", WRITE).json()
        assert c.get("/profile/gone", headers=READ).json()["model_version"] == v_b  # and the near cache holds it now
        # feedback under both versions, today and yesterday: a browsed and a clicked set per (day, version)
        yesterday = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()
        events = [
            {"user_id": "gone", "model_version": served["model_version"], "k": 5, "items": [item], **day}
            for served in (served_a, served_b)
            for item in [{"tags": [t["tag"] for t in served["tags"][:2]], "clicked": True}]
            for day in ({}, {"day": yesterday})
        ]
        assert c.post("/feedback", json={"events": events}, headers=WRITE).json()["counted"] == 4
        summary = c.get("/feedback/summary?days=2", headers=READ).json()
        assert_problem(c.delete("/profile/gone"), 401, "unauthorized")
        assert_problem(c.delete("/profile/gone", headers=READ), 403, "forbidden")

        r = c.delete("/profile/%20gone", headers=WRITE)  # the id stripped as everywhere else
        assert r.status_code == 200, r.text
        assert r.json()["user_id"] == "gone" and r.json()["deleted"] == 2 and r.json()["feedback_sets"] == 8
        assert {v_a, v_b} <= set(r.json()["model_versions"])
        assert not store.keys("utpm:fb:v1:*:u:gone:*") and store.keys("utpm:fb:v1:*:totals")
        assert c.get("/feedback/summary?days=2", headers=READ).json() == summary  # the aggregates stay
        # neither the near cache's copy nor a stale one is served
        assert_problem(c.get("/profile/gone", headers=READ), 404, "not_cached")
        lookup = c.post("/profiles/lookup", json={"user_ids": ["gone"]}, headers=READ).json()
        assert lookup["results"][0]["status"] == "missing"
        assert not store.keys("*:gone")
        kept = c.get("/profile/kept", headers=READ).json()
        assert kept["stale"] is True and kept["model_version"] == v_a  # other users untouched
        again = c.delete("/profile/gone", headers=WRITE)
        assert again.status_code == 200 and (again.json()["deleted"], again.json()["feedback_sets"]) == (0, 0)
        assert_problem(c.delete("/profile/%20", headers=WRITE), 422, "validation")


def test_forget_many_users_reports_each_and_serves_none_of_them(
    bundles: dict[str, Path], redis_server: RedisServer
) -> None:
    store, c = service(bundles, redis_server)
    with c:
        for user in ("two", "one", "kept"):
            post(c, user, WRITE)
        v_b = c.post("/admin/reload", json={"bundle": "b"}, headers={"x-api-key": API_KEY}).json()["model_version"]
        post(c, "two", WRITE)
        assert c.get("/profile/two", headers=READ).json()["model_version"] == v_b  # the near cache holds it now
        body = {"user_ids": ["two", " one", "never", "two"]}
        assert_problem(c.post("/profiles/forget", json=body), 401, "unauthorized")
        assert_problem(c.post("/profiles/forget", json=body, headers=READ), 403, "forbidden")

        r = c.post("/profiles/forget", json=body, headers=WRITE)
        assert r.status_code == 200, r.text
        got = r.json()
        # one result per requested id, in order, stripped as everywhere; a repeated id repeats its result
        assert [(x["user_id"], x["deleted"]) for x in got["results"]] == [
            ("two", 2),
            ("one", 1),
            ("never", 0),
            ("two", 2),
        ]
        assert got["deleted"] == 3 and v_b in got["model_versions"]
        for user in ("two", "one"):
            assert_problem(c.get(f"/profile/{user}", headers=READ), 404, "not_cached")
            assert not store.keys(f"*:{user}")
        lookup = c.post("/profiles/lookup", json={"user_ids": ["two", "one", "kept"]}, headers=READ).json()
        assert [x["status"] for x in lookup["results"]] == ["missing", "missing", "stale"]  # "kept" untouched
        assert c.post("/profiles/forget", json=body, headers=WRITE).json()["deleted"] == 0  # idempotent

        assert_problem(c.post("/profiles/forget", json={"user_ids": []}, headers=WRITE), 422, "validation")
        assert_problem(c.post("/profiles/forget", json={"user_ids": ["a", " "]}, headers=WRITE), 422, "validation")
        assert_problem(c.post("/profiles/forget", json={"user_ids": "two"}, headers=WRITE), 422, "validation")
        many = {"user_ids": [f"u{i}" for i in range(257)]}
        detail = assert_problem(c.post("/profiles/forget", json=many, headers=WRITE), 422, "validation")["detail"]
        assert "user_ids: List should have at most 256 items" in detail


@pytest.mark.parametrize("redis_backed", [True, False])
def test_delete_reaches_a_dropped_challengers_profiles(
    bundles: dict[str, Path], redis_server: RedisServer, redis_backed: bool
) -> None:
    """A challenger's profiles outlive its experiment (until their TTL): forgetting a user reaches them
    after the challenger is dropped, though its version was never served to everyone."""
    admin = {"x-api-key": API_KEY}
    store, c = (
        service(bundles, redis_server)
        if redis_backed
        else (None, TestClient(create_app(settings_for(bundles["a"], None, auth_keys=KEYS))))
    )
    with c:
        loaded = c.post("/admin/challenger", json={"bundle": "b", "share": 1.0}, headers=admin)
        assert loaded.status_code == 200, loaded.text
        assert post(c, "ch", WRITE).json()["arm"] == "challenger"
        post(c, "other", WRITE)
        assert c.delete("/admin/challenger", headers=admin).status_code == 200
        # the dropped challenger's version is no stale fallback for the champion
        assert_problem(c.get("/profile/other", headers=READ), 404, "not_cached")
        gone = c.delete("/profile/ch", headers=WRITE).json()
        assert gone["deleted"] == 1 and loaded.json()["challenger"]["model_version"] in gone["model_versions"]
        if store is not None:
            assert not store.keys("utpm:profile:*:ch")


def test_delete_with_the_embedded_cache(bundles: dict[str, Path]) -> None:
    with TestClient(create_app(settings_for(bundles["a"], None))) as c:
        tags = [t["tag"] for t in post(c, "team/alice", k=5).json()["tags"]]
        post(c, "bob")
        event = {"user_id": "team/alice", "k": 5, "items": [{"tags": tags[:2], "clicked": True}]}
        assert c.post("/feedback", json={"events": [event]}).json()["counted"] == 1
        gone = c.delete("/profile/team/alice").json()
        assert (gone["deleted"], gone["feedback_sets"]) == (1, 2)
        assert c.delete("/profile/team/alice").json()["feedback_sets"] == 0
        assert_problem(c.get("/profile/team/alice"), 404, "not_cached")
        forgot = c.post("/profiles/forget", json={"user_ids": ["bob", "team/alice"]}).json()
        assert [x["deleted"] for x in forgot["results"]] == [1, 0]
        assert_problem(c.get("/profile/bob"), 404, "not_cached")


def test_delete_while_redis_is_down_is_a_503_not_a_false_success(bundles: dict[str, Path], tmp_path: Path) -> None:
    from loadtest.procs import Redis

    with (
        Redis(workdir=tmp_path) as server,
        TestClient(create_app(settings_for(bundles["a"], None, redis_url=server.url))) as c,
    ):
        post(c, "u")
        server.stop()
        assert_problem(c.delete("/profile/u"), 503, "cache_unavailable")
        assert_problem(c.post("/profiles/forget", json={"user_ids": ["u"]}), 503, "cache_unavailable")
