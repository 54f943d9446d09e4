"""POST /profiles/lookup: found / stale / missing per user, in one Redis round trip."""

from __future__ import annotations

import re
from pathlib import Path

import redis
from fastapi.testclient import TestClient

from service.main import create_app
from tests.conftest import RedisServer
from tests.serving import API_KEY, assert_problem, post, settings_for

LOOKUP_DB = 7


def _read_round_trips(client: TestClient) -> float:
    match = re.search(r"^utpm_cache_read_batch_size_count (\S+)$", client.get("/metrics").text, re.M)
    return float(match.group(1)) if match else 0.0


def test_lookup_mixes_found_stale_and_missing_in_one_round_trip(
    bundles: dict[str, Path], redis_server: RedisServer
) -> None:
    redis.Redis(port=redis_server.port, db=LOOKUP_DB).flushdb()
    url = f"redis://127.0.0.1:{redis_server.port}/{LOOKUP_DB}"
    with TestClient(create_app(settings_for(bundles["a"], None, redis_url=url, near_cache_ttl_ms=0))) as c:
        v_a = post(c, "old-only").json()["model_version"]
        post(c, "both")
        v_b = c.post("/admin/reload", json={"bundle": "b"}, headers={"x-api-key": API_KEY}).json()["model_version"]
        post(c, "both")
        before = _read_round_trips(c)
        r = c.post("/profiles/lookup", json={"user_ids": ["both", "old-only", "nobody", "both"], "k": 3})
        assert r.status_code == 200, r.text
        assert _read_round_trips(c) == before + 1  # 4 users x 2 versions, one MGET
        body = r.json()
        assert body["model_version"] == v_b
        results = body["results"]
        assert [(x["user_id"], x["status"]) for x in results] == [
            ("both", "found"),
            ("old-only", "stale"),
            ("nobody", "missing"),
            ("both", "found"),
        ]
        found, stale, missing = results[0]["profile"], results[1]["profile"], results[2]["profile"]
        assert (found["model_version"], found["stale"], len(found["tags"])) == (v_b, False, 3)
        assert (stale["model_version"], stale["stale"], len(stale["tags"])) == (v_a, True, 3)
        assert missing is None
        assert found == c.get("/profile/both", params={"k": 3}).json()  # what GET answers, byte for byte
        assert "/profiles/lookup" in c.get("/openapi.json").json()["paths"]

    off = settings_for(bundles["b"], None, redis_url=url, cache_stale_fallback=False, max_lookup_users=3)
    with TestClient(create_app(off)) as c:
        r = c.post("/profiles/lookup", json={"user_ids": ["both", "old-only"]})
        assert [x["status"] for x in r.json()["results"]] == ["found", "missing"]
        too_many = c.post("/profiles/lookup", json={"user_ids": ["a", "b", "c", "d"]})
        assert "at most 3 users per lookup" in assert_problem(too_many, 422, "invalid_input")["detail"]
        assert_problem(c.post("/profiles/lookup", json={"user_ids": []}), 422, "validation")
        assert_problem(c.post("/profiles/lookup", json={"user_ids": ["a"], "k": "5"}), 422, "validation")
