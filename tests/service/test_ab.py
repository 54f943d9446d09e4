"""A/B by model version (service.ab): stable assignment, arms kept apart, admin swaps without failed requests."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from service.ab import PIN_HEADER, assign
from service.main import create_app
from tests.conftest import RedisServer
from tests.serving import API_KEY, USER, LiveServer, assert_problem, post, settings_for

ADMIN = {"X-API-Key": API_KEY}


def test_assignment_is_stable_and_close_to_the_share_over_10k_users() -> None:
    users = [f"user-{i}" for i in range(10_000)]
    for share in (0.1, 0.5, 0.8):
        arms = [assign("v-challenger", u, share) for u in users]
        n = Counter(arms)["challenger"]
        sd = (len(users) * share * (1 - share)) ** 0.5
        assert abs(n - share * len(users)) < 4 * sd, (share, n)
        assert arms == [assign("v-challenger", u, share) for u in users]  # stable
    # a larger share only moves users into the challenger arm, never out of it
    small = {u for u in users if assign("v", u, 0.2) == "challenger"}
    large = {u for u in users if assign("v", u, 0.6) == "challenger"}
    assert small < large
    assert all(assign("v", u, 0.0) == "champion" for u in users[:500])
    assert all(assign("v", u, 1.0) == "challenger" for u in users[:500])
    # the next challenger reshuffles: its users are not the same half
    other = {u for u in users if assign("w", u, 0.5) == "challenger"}
    half = {u for u in users if assign("v", u, 0.5) == "challenger"}
    assert 0.4 < len(other & half) / len(half) < 0.6


@pytest.fixture()
def ab_client(bundles: dict[str, Path], redis_server: RedisServer) -> Iterator[TestClient]:
    settings = settings_for(bundles["a"], redis_server, ab_challenger_bundle=bundles["b"], ab_challenger_share=0.5)
    with TestClient(create_app(settings)) as c:
        yield c


def test_each_user_gets_its_arm_and_the_arms_profiles_stay_apart(ab_client: TestClient) -> None:
    arms = ab_client.get("/experiment").json()
    champion, challenger = arms["champion"]["model_version"], arms["challenger"]["model_version"]
    assert champion != challenger and arms["challenger_share"] == 0.5
    assert arms["champion"]["tags_per_item"] == arms["challenger"]["tags_per_item"] == 3  # the tiny preset's N
    version = {"champion": champion, "challenger": challenger}
    seen: Counter[str] = Counter()
    for i in range(24):
        user = f"ab-{i}"
        expected = assign(challenger, user, 0.5)
        body = post(ab_client, user, k=5).json()
        assert body["arm"] == expected and body["model_version"] == version[expected]
        got = ab_client.get(f"/profile/{user}", params={"k": 5}).json()
        assert (got["arm"], got["model_version"], got["tags"]) == (expected, version[expected], body["tags"])
        # the other arm's version has no profile of this user: the cache keeps arms apart
        other = "champion" if expected == "challenger" else "challenger"
        miss = ab_client.get(f"/profile/{user}", headers={PIN_HEADER: version[other]})
        assert_problem(miss, 404, "not_cached")
        seen[expected] += 1
    assert seen["champion"] and seen["challenger"]
    # a pinned version serves anyone, named by its own arm
    pinned = post(ab_client, "ab-0", k=3, store=False)
    for arm, v in version.items():
        r = ab_client.post(
            "/profile", json={"user_id": "ab-pin", "features": {"clicked_tags": ["sci-fi"]}}, headers={PIN_HEADER: v}
        )
        assert (r.json()["arm"], r.json()["model_version"]) == (arm, v)
    assert pinned.status_code == 200
    assert_problem(ab_client.get("/profile/ab-0", headers={PIN_HEADER: "nope"}), 422, "invalid_input")
    # a batch spanning both arms: one answer per user, in order, each from its arm
    users = [{"user_id": f"ab-{i}", "features": {"clicked_tags": ["sci-fi"]}, "k": 2} for i in range(10)]
    batch = ab_client.post("/profiles", json={"users": users}).json()["profiles"]
    assert [p["user_id"] for p in batch] == [u["user_id"] for u in users]
    for p in batch:
        arm = assign(challenger, p["user_id"], 0.5)
        assert (p["arm"], p["model_version"]) == (arm, version[arm])


def test_without_a_challenger_every_user_is_the_champions(bundles: dict[str, Path]) -> None:
    with TestClient(create_app(settings_for(bundles["a"], None))) as c:
        assert c.get("/experiment").json()["challenger"] is None
        for i in range(10):
            body = post(c, f"solo-{i}", k=2).json()
            assert body["arm"] == "champion"
            assert c.get(f"/profile/solo-{i}").json()["arm"] == "champion"
        assert "utpm_ab_arm_info" in c.get("/metrics").text


def test_admin_loads_reshares_promotes_and_drops_the_challenger(bundles: dict[str, Path]) -> None:
    with TestClient(create_app(settings_for(bundles["a"], None))) as c:
        champion = c.get("/experiment").json()["champion"]["model_version"]
        assert_problem(c.post("/admin/challenger", json={"bundle": "b"}), 401, "unauthorized")
        assert_problem(c.post("/admin/challenger/promote", headers=ADMIN), 409)
        assert_problem(c.post("/admin/challenger", json={"bundle": "a"}, headers=ADMIN), 422, "reload_refused")
        assert_problem(c.post("/admin/challenger", json={"bundle": "b_raw"}, headers=ADMIN), 422, "reload_refused")
        r = c.post("/admin/challenger", json={"bundle": "b", "share": 1.0}, headers=ADMIN)
        assert r.status_code == 200, r.text
        challenger = r.json()["challenger"]["model_version"]
        assert post(c, "x", k=2).json()["arm"] == "challenger"
        # the share is a strict number in [0, 1]: no guess at a string or a boolean, and nothing changes
        for bad in ("0", False, 1.5, -0.1, None):
            assert_problem(c.post("/admin/challenger/share", json={"share": bad}, headers=ADMIN), 422, "validation")
            bad_load = c.post(
                "/admin/challenger", json={"bundle": "b", "share": bad if bad is not None else "x"}, headers=ADMIN
            )
            assert_problem(bad_load, 422, "validation")
        assert c.get("/experiment").json()["challenger_share"] == 1.0
        assert post(c, "x", k=2).json()["arm"] == "challenger"
        c.post("/admin/challenger/share", json={"share": 0.0}, headers=ADMIN)
        assert post(c, "x", k=2).json()["arm"] == "champion"
        assert c.delete("/admin/challenger", headers=ADMIN).json()["challenger"] is None
        assert post(c, "x", k=2).json()["model_version"] == champion
        c.post("/admin/challenger", json={"bundle": "b", "share": 0.5}, headers=ADMIN)
        promoted = c.post("/admin/challenger/promote", headers=ADMIN).json()
        assert promoted["champion"]["model_version"] == challenger and promoted["challenger"] is None
        body = post(c, "y", k=2).json()
        assert (body["arm"], body["model_version"]) == ("champion", challenger)
        assert f'model_version="{challenger}"' in c.get("/metrics").text


def test_promoting_a_challenger_under_load_fails_no_request(
    bundles: dict[str, Path], redis_server: RedisServer
) -> None:
    settings = settings_for(bundles["a"], redis_server)
    statuses: Counter[int] = Counter()
    versions: set[str] = set()
    stop = threading.Event()

    def load(url: str, worker: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            i = 0
            while not stop.is_set():
                user = f"load-{worker}-{i % 20}"
                r = post(client, user, k=3)
                statuses[r.status_code] += 1
                if r.status_code == 200:
                    versions.add(r.json()["model_version"])
                g = client.get(f"/profile/{user}")
                statuses[g.status_code if g.status_code != 404 else 200] += 1  # a miss right after a swap is no failure
                i += 1

    with LiveServer(settings) as url:
        threads = [threading.Thread(target=load, args=(url, w)) for w in range(4)]
        for t in threads:
            t.start()

        def traffic_goes_on() -> None:  # every swap happens among requests in flight
            seen = sum(statuses.values())
            while sum(statuses.values()) < seen + 40:
                time.sleep(0.01)

        with httpx.Client(base_url=url, headers=ADMIN, timeout=60) as admin:
            for bundle in ("b", "a", "b"):  # load, promote; three champions in a row under load
                traffic_goes_on()
                assert admin.post("/admin/challenger", json={"bundle": bundle, "share": 0.5}).status_code == 200
                traffic_goes_on()
                assert admin.post("/admin/challenger/promote").status_code == 200
            traffic_goes_on()
            assert admin.post("/admin/challenger", json={"bundle": "a", "share": 0.5}).status_code == 200
            traffic_goes_on()
            assert admin.delete("/admin/challenger").status_code == 200
            traffic_goes_on()
        stop.set()
        for t in threads:
            t.join()
    assert set(statuses) == {200}, statuses
    assert statuses[200] >= 320 and len(versions) == 2


def test_both_arms_take_one_request_body_when_their_fields_differ(
    bundles: dict[str, Path], movielens_dir: Path, tmp_path: Path
) -> None:
    """A challenger trained with a new field (`clicked_account`, from a new item column), which the
    clients then send: before, every user of the champion's arm got 422 "unknown field" for the body
    the challenger's arm answered. Each arm now accepts the other's fields and leaves out those it was
    not trained with; a field no arm takes is still 422, and so is the new one once the A/B is dropped."""
    import shutil

    import pandas as pd

    from index.build import build_index
    from pipeline.build import DataSource, build_bundle
    from tests.conftest import tiny_config

    data = tmp_path / "with-account"
    data.mkdir()
    for f in movielens_dir.iterdir():
        if f.is_file() and not f.name.startswith("items."):
            shutil.copy(f, data / f.name)
    items = next(movielens_dir.glob("items.*"))
    table = pd.read_csv(items, dtype=str, keep_default_na=False) if items.suffix == ".csv" else pd.read_parquet(items)
    table.assign(account=[f"acc{i % 7}" for i in range(len(table))]).to_csv(data / "items.csv", index=False)
    built = build_bundle(
        tmp_path / "built", DataSource("generic", data), tiny_config(epochs=1, seed=2), index_kind=None
    )
    shutil.copytree(built.bundle, bundles["root"] / "with-account")
    build_index(bundles["root"] / "with-account", kind="flat")
    with_account = {"clicked_account": ["acc1", "acc3"]}

    with TestClient(create_app(settings_for(bundles["a"], None))) as c:
        r = c.post("/admin/challenger", json={"bundle": "with-account", "share": 0.5}, headers=ADMIN)
        assert r.status_code == 200, r.text
        arms = r.json()
        assert "clicked_account" in arms["challenger"]["fields"] and "clicked_account" not in arms["champion"]["fields"]
        assert arms["champion"]["ignored_fields"] == ["clicked_account"] and arms["challenger"]["ignored_fields"] == []
        served: Counter[str] = Counter()
        for i in range(40):  # both arms, the new field in every body
            body = post(c, f"mixed-{i}", k=2, features={**USER, **with_account})
            assert body.status_code == 200, body.text
            served[body.json()["arm"]] += 1
        assert served["champion"] > 0 and served["challenger"] > 0, served
        assert_problem(c.post("/profile", json={"user_id": "u", "features": {"no_such_field": ["x"]}}), 422)
        c.delete("/admin/challenger", headers=ADMIN)
        assert c.get("/experiment").json()["champion"]["ignored_fields"] == []
        assert_problem(post(c, "after-drop", k=2, features={**USER, **with_account}), 422)
