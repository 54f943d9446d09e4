"""Fleet sync (service.fleet): one admin call changes every replica sharing the Redis. Two or three
real apps on one real redis-server database, real bundles."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from service.fleet import POLL_S
from service.main import create_app
from tests.conftest import RedisServer
from tests.serving import API_KEY, post, settings_for

ADMIN = {"x-api-key": API_KEY}
FLEET_DB = 9


@pytest.fixture()
def replica(bundles: dict[str, Path], redis_server: RedisServer) -> Callable[..., TestClient]:
    """A factory of replicas of bundle a with fleet sync on, all on one emptied database."""
    redis.Redis(port=redis_server.port, db=FLEET_DB).flushdb()
    url = f"redis://127.0.0.1:{redis_server.port}/{FLEET_DB}"

    def make(bundle: Path = bundles["a"], **kw: Any) -> TestClient:
        return TestClient(create_app(settings_for(bundle, None, redis_url=url, **{"fleet_sync": True, **kw})))

    return make


def until(check: Callable[[], bool], what: str, timeout_s: float = 10 * POLL_S + 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"the other replica did not follow: {what}"
        time.sleep(0.1)


def arms(c: TestClient) -> tuple[str, str | None, float]:
    e = c.get("/experiment").json()
    return e["champion"]["model_version"], (e["challenger"] or {}).get("model_version"), e["challenger_share"]


def test_admin_calls_on_one_replica_change_every_replica(replica: Callable[..., TestClient]) -> None:
    with replica() as one, replica() as two:
        a = arms(one)[0]
        reloaded = one.post("/admin/reload", json={"bundle": "b"}, headers=ADMIN).json()
        b, seq = reloaded["model_version"], reloaded["fleet"]["seq"]
        assert seq is not None
        until(lambda: arms(two) == (b, None, 0.0), "reload")
        assert post(two, "u", k=3).json()["model_version"] == b  # it serves the new bundle, not only says so
        assert two.get("/readyz").json()["fleet"] == {"sync": True, "applied": seq, "error": None}

        one.post("/admin/challenger", json={"bundle": "a", "share": 0.5}, headers=ADMIN)
        until(lambda: arms(two) == (b, a, 0.5), "challenger")
        two.post("/admin/challenger/share", json={"share": 0.2}, headers=ADMIN)  # either replica can steer
        until(lambda: arms(one) == (b, a, 0.2), "share")
        one.post("/admin/challenger/promote", headers=ADMIN)
        until(lambda: arms(two) == (a, None, 0.0), "promote")
        one.post("/admin/challenger", json={"bundle": "b", "share": 1.0}, headers=ADMIN)
        until(lambda: arms(two) == (a, b, 1.0), "second challenger")
        one.delete("/admin/challenger", headers=ADMIN)
        until(lambda: arms(two) == (a, None, 0.0), "drop")


def test_a_replica_starting_later_serves_the_fleets_arms_from_its_first_request(
    replica: Callable[..., TestClient], bundles: dict[str, Path]
) -> None:
    with replica() as one:
        b = one.post("/admin/reload", json={"bundle": "b"}, headers=ADMIN).json()["model_version"]
        one.post("/admin/challenger", json={"bundle": "a", "share": 0.3}, headers=ADMIN)
        a = arms(one)[1]
        with replica() as late:
            assert arms(late) == (b, a, 0.3)  # no wait: applied before the app took its first request
        # a replica configured with another bundle (a deployment that changed UTPM_BUNDLE) starts from it
        with replica(bundle=bundles["b"]) as redeployed:
            assert arms(redeployed) == (b, None, 0.0)


def test_a_bundle_a_replica_cannot_load_leaves_it_serving_and_says_why(
    replica: Callable[..., TestClient], bundles: dict[str, Path], tmp_path: Path
) -> None:
    import shutil

    # the second replica's bundle root lacks b: the fleet's reload cannot be followed there
    root = tmp_path / "root"
    root.mkdir()
    shutil.copytree(bundles["a"], root / "a")
    with replica() as one, replica(bundle=root / "a", bundle_root=root) as two:
        a = arms(two)[0]
        one.post("/admin/reload", json={"bundle": "b"}, headers=ADMIN)
        until(lambda: two.get("/readyz").json()["fleet"]["error"] is not None, "error reported")
        fleet = two.get("/readyz").json()["fleet"]
        assert "'b'" in fleet["error"] and fleet["applied"] is None
        metrics = two.get("/metrics").text
        assert "utpm_fleet_in_sync 0.0" in metrics and 'utpm_fleet_applies_total{result="failed"} 1.0' in metrics
        assert arms(two)[0] == a and post(two, "still", k=3).status_code == 200
        # the next state is tried at once, not after the failed one's back-off (30 s)
        seq = one.post("/admin/reload", json={"bundle": "a"}, headers=ADMIN).json()["fleet"]["seq"]
        until(lambda: two.get("/readyz").json()["fleet"] == {"sync": True, "applied": seq, "error": None}, "next")
        assert "utpm_fleet_in_sync 1.0" in two.get("/metrics").text


def test_without_fleet_sync_an_admin_call_changes_only_its_replica(replica: Callable[..., TestClient]) -> None:
    with replica(fleet_sync=False) as one, replica(fleet_sync=False) as two:
        a = arms(two)[0]
        assert "fleet" not in one.post("/admin/reload", json={"bundle": "b"}, headers=ADMIN).json()
        time.sleep(3 * POLL_S)
        assert arms(two)[0] == a and two.get("/readyz").json()["fleet"] == {"sync": False}


def test_a_restarted_redis_restarts_the_numbering_and_the_replicas_still_follow(
    replica: Callable[..., TestClient], redis_server: RedisServer
) -> None:
    with replica() as one, replica() as two:
        a = arms(one)[0]
        b = one.post("/admin/reload", json={"bundle": "b"}, headers=ADMIN).json()["model_version"]
        until(lambda: arms(two)[0] == b, "first reload")
        redis.Redis(port=redis_server.port, db=FLEET_DB).flushdb()  # Redis restarted without persistence
        again = one.post("/admin/reload", json={"bundle": "a"}, headers=ADMIN).json()
        assert again["fleet"]["seq"] == 1  # the same number as the state the other replica applied
        until(lambda: arms(two)[0] == a, "reload after the restart")
