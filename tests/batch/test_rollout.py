"""Rollout without a 404 storm: warm the new version with the batch job, reload, and every user
still gets a profile (the new version's where warmed, else the old one's marked stale)."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient

from batch import BatchJob, run_batch
from batch.sources import JsonlSource
from service.main import create_app
from tests.batch.conftest import AS_OF_MS, TTL_S, flush
from tests.conftest import RedisServer
from tests.serving import API_KEY, settings_for

ROLLOUT_DB = 6


def _job(rows: list[str], path: Path, bundle: Path, url: str) -> BatchJob:
    path.write_text("\n".join(rows) + "\n")
    return BatchJob(
        source=JsonlSource(path),
        bundle=bundle,
        redis_url=url,
        out=path.parent / f"{path.stem}-job",
        ttl_ms=TTL_S * 1000,
        computed_at_ms=AS_OF_MS,
    )


def test_warm_then_reload_answers_every_user(
    population: Path, bundles: dict[str, Path], redis_server: RedisServer, tmp_path: Path
) -> None:
    url = flush(redis_server, ROLLOUT_DB)
    lines = population.read_text().splitlines()[:60]
    users = [json.loads(line)["user_id"] for line in lines]
    warmed, not_warmed = users[0], users[45]
    run_batch(_job(lines, tmp_path / "all.jsonl", bundles["a"], url), workers=1)
    settings = settings_for(bundles["a"], None, redis_url=url, near_cache_ttl_ms=0)
    with TestClient(create_app(settings)) as c:
        v_a = c.get(f"/profile/{not_warmed}").json()["model_version"]
        # the new version is warmed for half the users while the old one serves
        run_batch(_job(lines[:30], tmp_path / "half.jsonl", bundles["b"], url), workers=1)
        assert c.get(f"/profile/{warmed}").json()["model_version"] == v_a
        r = c.post("/admin/reload", json={"bundle": "b"}, headers={"x-api-key": API_KEY})
        assert r.status_code == 200, r.text
        v_b = r.json()["model_version"]
        fresh = c.get(f"/profile/{warmed}").json()
        assert (fresh["model_version"], fresh["stale"], fresh["cached"]) == (v_b, False, True)
        old = c.get(f"/profile/{not_warmed}").json()
        assert (old["model_version"], old["stale"], old["cached"]) == (v_a, True, True)
        assert old["computed_at"] == fresh["computed_at"]  # both from batch jobs of the same --as-of
        assert [c.get(f"/profile/{u}").status_code for u in users] == [200] * 60  # no 404 storm
        assert c.get("/profile/never-profiled").status_code == 404
        assert 'utpm_cache_requests_total{result="stale"}' in c.get("/metrics").text

    # a replica that starts on the new version knows the old one from the registry in Redis
    with TestClient(create_app(settings_for(bundles["b"], None, redis_url=url, near_cache_ttl_ms=0))) as c:
        old = c.get(f"/profile/{not_warmed}").json()
        assert (old["model_version"], old["stale"]) == (v_a, True)

    off = settings_for(bundles["b"], None, redis_url=url, near_cache_ttl_ms=0, cache_stale_fallback=False)
    with TestClient(create_app(off)) as c:
        assert c.get(f"/profile/{not_warmed}").status_code == 404
        assert c.get(f"/profile/{warmed}").json()["stale"] is False
