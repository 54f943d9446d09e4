"""End-to-end tests of the profile service on a tiny bundle trained in this test run.

Caching tests talk to the real redis-server of the `redis_server` fixture; the hot-reload test runs
the app in a real uvicorn server and fires concurrent HTTP requests at it.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from tests.conftest import RedisServer
from tests.serving import API_KEY, USER, LiveServer, assert_problem, post, settings_for


@pytest.fixture()
def client(bundles: dict[str, Path], redis_server: RedisServer) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(bundles["a"], redis_server))) as c:
        yield c


def test_post_profile_returns_ranked_tags_and_caches_them(client: TestClient) -> None:
    r = post(client, "alice", k=7)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user_id"] == "alice" and body["cached"] is False and body["all_unknown"] is False
    assert len(body["tags"]) == 7
    scores = [t["score"] for t in body["tags"]]
    assert scores == sorted(scores, reverse=True)
    assert len({t["tag"] for t in body["tags"]}) == 7
    g = client.get("/profile/alice", params={"k": 5})
    assert g.status_code == 200
    cached = g.json()
    assert cached["cached"] is True and cached["model_version"] == body["model_version"]
    assert cached["tags"] == body["tags"][:5]


def test_readyz_says_a_paper_bundle_is_scored_by_its_model(client: TestClient) -> None:
    body = client.get("/readyz").json()
    assert body["scorer"] == "model" and body["model"] == "utpm"


def test_user_ids_with_slashes_are_read_back_through_redis(client: TestClient) -> None:
    """A user id holding `/` is one path parameter, sent raw or percent-encoded (real Redis behind)."""
    for user in ("team/alice", "a/b/c", "/leading", "trailing/"):
        posted = post(client, user, k=5)
        assert posted.status_code == 200, posted.text
        for path in (f"/profile/{user}", "/profile/" + user.replace("/", "%2F")):
            g = client.get(path, params={"k": 5})
            assert g.status_code == 200, (path, g.text)
            assert g.json()["user_id"] == user and g.json()["cached"] is True
            assert g.json()["tags"] == posted.json()["tags"]
    assert_problem(client.get("/profile/team/nobody"), 404, "not_cached")
    metrics = client.get("/metrics").text
    assert 'route="/profile/{user_id}"' in metrics and "user_id:path" not in metrics


def test_get_checks_its_parameters_as_the_documented_route_does(client: TestClient) -> None:
    """GET /profile/{user_id} is answered by a plain ASGI route: the same 422s, other query keys ignored;
    a `k` given twice is refused (FastAPI's route took the last: `?k=2&k=300` answered 300 tags)."""
    assert post(client, "params", k=5).status_code == 200
    assert len(client.get("/profile/params?k=3&other=x").json()["tags"]) == 3
    assert len(client.get("/profile/params?other=x&k=%32").json()["tags"]) == 2
    assert len(client.get("/profile/params").json()["tags"]) == 50  # the default k (100 are cached)
    for query, kind in (("k=abc", "int_parsing"), ("k=0", "greater_than_equal"), ("k=-1", "greater_than_equal")):
        body = assert_problem(client.get(f"/profile/params?{query}"), 422, "validation")
        assert body["errors"][0]["loc"] == ["query", "k"] and body["errors"][0]["type"] == kind, body
    twice = assert_problem(client.get("/profile/params?k=2&other=x&k=30"), 422, "validation")
    assert twice["detail"] == "k: given 2 times (2, 30); give it once", twice
    too_long = assert_problem(client.get("/profile/" + "u" * 257), 422, "validation")
    assert too_long["errors"][0]["loc"] == ["path", "user_id"]
    assert client.head("/profile/params").status_code == 200
    assert "/profile/{user_id}" in client.get("/openapi.json").json()["paths"]
    # the user id is stripped of surrounding whitespace on the way in (POST) and on the way out (GET)
    assert post(client, " spaced\t", k=5).json()["user_id"] == "spaced"
    for path in ("/profile/%20spaced%09", "/profile/spaced", "/profile/%20spaced"):
        assert client.get(path).json()["user_id"] == "spaced", path
    blank = assert_problem(client.get("/profile/%20%20"), 422, "validation")
    assert blank["errors"][0]["loc"] == ["path", "user_id"] and blank["errors"][0]["type"] == "string_too_short"


def test_profile_matches_pytorch_ranking(client: TestClient, tiny_run: Path) -> None:
    """What the service returns is what the trained PyTorch model ranks (round trip through ONNX + FAISS)."""
    import numpy as np
    import torch

    from utpm.training.run import load_run

    run = load_run(tiny_run)
    batch = run.encoder.encode([USER])
    ids = [torch.from_numpy(batch.ids[f]) for f in run.encoder.field_names]
    masks = [torch.from_numpy(batch.mask[f]) for f in run.encoder.field_names]
    with torch.no_grad():
        scores = (run.model(ids, masks) @ run.model.tag_embedding.weight.T)[0].numpy()
    scores[:2] = -np.inf
    expected = [run.tags.token(int(i)) for i in np.argsort(-scores)[:10]]
    served = [t["tag"] for t in post(client, "torch-check", k=10).json()["tags"]]
    assert served == expected


def test_unknown_values_are_reported_and_all_unknown_is_flagged(client: TestClient) -> None:
    r = client.post("/profile", json={"user_id": "u", "features": {"clicked_tags": ["zzz-never", "sci-fi"]}})
    assert r.json()["unknown"] == {"clicked_tags": ["zzz-never"]} and r.json()["all_unknown"] is False
    r = client.post("/profile", json={"user_id": "u2", "features": {"clicked_tags": ["q1", "q2"]}, "k": 3})
    assert r.status_code == 200 and r.json()["all_unknown"] is True and len(r.json()["tags"]) == 3


def test_values_are_stripped_as_the_training_data_was_and_blank_ones_are_absent(client: TestClient) -> None:
    clean = client.post("/profile", json={"user_id": "s", "features": {"clicked_tags": ["sci-fi", "drama"]}})
    padded = client.post("/profile", json={"user_id": "s", "features": {"clicked_tags": [" sci-fi ", "", "drama "]}})
    assert padded.status_code == 200 and padded.json()["unknown"] == {}
    assert padded.json()["tags"] == clean.json()["tags"]


def test_explanation_has_every_value_head_and_field(client: TestClient) -> None:
    body = post(client, "bob", k=3, explain=True).json()
    ex = body["explanation"]
    assert ex["tag_scores"] == body["tags"]
    fields = {f["field"]: f for f in ex["fields"]}
    tags_field = fields["clicked_tags"]
    assert [v["value"] for v in tags_field["values"]] == USER["clicked_tags"]
    for head in range(ex["heads"]):
        assert abs(sum(v["weights"][head] for v in tags_field["values"]) - 1) < 1e-4
        assert abs(sum(f["merge_weights"][head] for f in ex["fields"]) - 1) < 1e-4
    assert fields["unclicked_tags"]["values"] == [] and fields["unclicked_tags"]["merge_weights"] == [0.0] * ex["heads"]


def test_lists_longer_than_max_len_keep_the_most_recent_values(client: TestClient) -> None:
    many = [f"v{i}" for i in range(50)] + ["sci-fi"]
    body = client.post("/profile", json={"user_id": "c", "features": {"clicked_tags": many}, "explain": True}).json()
    values = next(f for f in body["explanation"]["fields"] if f["field"] == "clicked_tags")["values"]
    assert values[-1]["value"] == "sci-fi"  # the newest value is kept


@pytest.mark.parametrize(
    ("payload", "status", "needle"),
    [
        ({"user_id": "x", "features": {"nope": ["a"]}}, 422, "valid fields: ['clicked_tags'"),
        ({"user_id": "x", "features": {"clicked_tags": 5}}, 422, "clicked_tags"),
        ({"user_id": "x", "features": {"clicked_tags": [{"a": 1}]}}, 422, "clicked_tags"),
        ({"user_id": "x", "k": 0}, 422, "k"),
        ({"user_id": "x", "k": 1001}, 422, "k must be between 1 and 1000"),
        ({"user_id": "x", "k": "ten"}, 422, "k"),
        # strict scalars: a JSON string is no number, and neither a string nor 1 a boolean
        ({"user_id": "x", "k": "5"}, 422, "k: Input should be a valid integer"),
        ({"user_id": "x", "k": 5.5}, 422, "k: Input should be a valid integer"),
        ({"user_id": "x", "explain": "yes"}, 422, "explain: Input should be a valid boolean"),
        ({"user_id": "x", "store": 0}, 422, "store: Input should be a valid boolean"),
        ({"user_id": "", "features": {}}, 422, "user_id"),
        ({"features": {}}, 422, "user_id"),
        ({"user_id": "x", "extra": 1}, 422, "extra"),
    ],
)
def test_bad_input_gets_a_clear_4xx(client: TestClient, payload: dict[str, Any], status: int, needle: str) -> None:
    r = client.post("/profile", json=payload)
    assert needle in assert_problem(r, status)["detail"]


def test_a_body_field_in_the_query_string_is_refused_not_ignored(client: TestClient) -> None:
    """Before, POST /profile?k=5 answered 50 tags (the query string was not read); other parameters
    (a tracing or cache-busting one) are still let through."""
    r = client.post("/profile?k=5", json={"user_id": "q", "features": {}})
    assert assert_problem(r, 422)["detail"] == "k: goes in the JSON body of POST /profile, not in the query string"
    assert client.get("/profile/q").status_code == 404  # nothing was computed or stored
    assert client.post("/profile?trace=1", json={"user_id": "q", "features": {}, "k": 5}).status_code == 200
    lookup = client.post("/profiles/lookup?k=5", json={"user_ids": ["q"]})
    assert (
        assert_problem(lookup, 422)["detail"]
        == "k: goes in the JSON body of POST /profiles/lookup, not in the query string"
    )
    many = client.post("/profiles?users=1", json={"users": [{"user_id": "q", "features": {}}]})
    assert "users: goes in the JSON body of POST /profiles" in assert_problem(many, 422)["detail"]


def test_a_compressed_body_is_refused_not_read_as_broken_json(client: TestClient) -> None:
    body = gzip.compress(orjson.dumps({"user_id": "z", "features": {"clicked_tags": ["sci-fi"]}}))
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    r = client.post("/profile", content=body, headers=headers)
    assert "'gzip' is not supported" in assert_problem(r, 415, "unsupported_encoding")["detail"]
    assert r.headers["accept-encoding"] == "identity"
    assert client.get("/profile/z").status_code == 404  # nothing was computed or stored
    plain = {"content-type": "application/json", "content-encoding": "identity"}
    assert client.post("/profile", content=gzip.decompress(body), headers=plain).status_code == 200


def test_oversized_body_and_broken_json(client: TestClient) -> None:
    big = {"user_id": "x", "features": {"clicked_tags": ["a" * 500] * 4000}}
    r = client.post("/profile", json=big)
    assert "larger than" in assert_problem(r, 413, "payload_too_large")["detail"]
    # the same body streamed without a Content-Length (chunked): counted as it arrives
    raw = json.dumps(big).encode()
    chunks = (raw[i : i + 65536] for i in range(0, len(raw), 65536))
    r = client.post("/profile", content=chunks, headers={"content-type": "application/json"})
    assert r.request.headers.get("transfer-encoding") == "chunked" and "content-length" not in r.request.headers
    assert "larger than" in assert_problem(r, 413, "payload_too_large")["detail"]
    r = client.post("/profile", content=b"{not json", headers={"content-type": "application/json"})
    assert "JSON" in assert_problem(r, 422, "validation")["detail"]
    r = client.post("/profile", content=b"user_id=x", headers={"content-type": "text/plain"})
    assert_problem(r, 422, "validation")
    r = client.post("/profile", content=b"{}", headers={"content-type": "application/json", "content-length": "x"})
    assert_problem(r, 400, "bad_request")
    assert_problem(client.get("/no/such/route"), 404, "not_found")
    assert_problem(client.put("/profile/x"), 405, "method_not_allowed")


def test_get_unknown_user_is_404_with_detail(client: TestClient) -> None:
    r = client.get("/profile/nobody-here")
    assert "POST /profile computes one" in assert_problem(r, 404, "not_cached")["detail"]
    assert "k" in assert_problem(client.get("/profile/x", params={"k": 0}), 422, "validation")["detail"]
    assert_problem(client.get("/profile/x", params={"k": 1001}), 422, "invalid_input")


def test_request_ids_are_echoed_or_made(client: TestClient) -> None:
    r = client.get("/healthz", headers={"X-Request-ID": "trace-42"})
    assert r.headers["x-request-id"] == "trace-42"
    made = {client.get("/profile/nobody").headers["x-request-id"] for _ in range(3)}
    assert len(made) == 3 and all(len(m) >= 16 for m in made)


def test_the_hot_routes_skip_the_router_and_keep_its_error_answers(
    bundles: dict[str, Path], redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """POST /profile and GET /profile/{user_id} are answered by `HotRoutes` (the router's exception
    layer never sees them) with the same problem answers, an unexpected error included."""
    from starlette.middleware.exceptions import ExceptionMiddleware

    from service.engine import ProfileEngine

    routed: list[str] = []
    through = ExceptionMiddleware.__call__

    async def counting(self: ExceptionMiddleware, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            routed.append(f"{scope['method']} {scope['path']}")
        await through(self, scope, receive, send)

    monkeypatch.setattr(ExceptionMiddleware, "__call__", counting)
    with TestClient(create_app(settings_for(bundles["a"], redis_server)), raise_server_exceptions=False) as c:
        assert post(c, "hot", k=3).status_code == 200
        assert c.get("/profile/hot", params={"k": 2}).status_code == 200
        assert_problem(c.get("/profile/nobody"), 404, "not_cached")
        assert "k" in assert_problem(c.post("/profile", json={"user_id": "x", "k": 0}), 422, "validation")["detail"]
        assert routed == []
        # HEAD, other methods and other routes still go through the router
        assert c.head("/profile/hot").status_code == 200
        assert_problem(c.put("/profile/x"), 405, "method_not_allowed")
        assert c.get("/healthz").status_code == 200
        assert routed == ["HEAD /profile/hot", "PUT /profile/x", "GET /healthz"]

        def broken(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("a bug")

        monkeypatch.setattr(ProfileEngine, "encode", broken)
        body = assert_problem(post(c, "hot", k=3), 500, "internal")
        assert "a bug" not in body["detail"] and body["request_id"] in body["detail"]


@pytest.fixture()
def redis_only(bundles: dict[str, Path], redis_server: RedisServer) -> Iterator[TestClient]:
    """The service with its near cache off: every GET goes to Redis."""
    with TestClient(create_app(settings_for(bundles["a"], redis_server, near_cache_ttl_ms=0))) as c:
        yield c


def test_a_cached_value_not_written_by_the_service_is_a_miss(redis_only: TestClient, redis_server: RedisServer) -> None:
    import redis

    from service.cache import profile_key

    version = post(redis_only, "tampered").json()["model_version"]
    redis.Redis(port=redis_server.port).set(profile_key(version, "tampered"), b'{"not": "a record"}')
    r = redis_only.get("/profile/tampered")
    assert r.status_code == 404 and "no readable cached profile" in r.json()["detail"]
    assert post(redis_only, "tampered").status_code == 200 and redis_only.get("/profile/tampered").status_code == 200


def test_near_cache_answers_repeats_and_goes_stale_for_at_most_its_ttl(
    bundles: dict[str, Path], redis_server: RedisServer
) -> None:
    import redis

    from service.cache import profile_key

    with TestClient(create_app(settings_for(bundles["a"], redis_server, near_cache_ttl_ms=500))) as c:
        first = post(c, "near", k=3).json()
        direct = redis.Redis(port=redis_server.port)
        key = profile_key(first["model_version"], "near")
        # Another replica recomputes the profile: this one keeps answering its own copy for <= 500 ms.
        other = post(c, "near-other", k=3)
        recomputed = direct.get(profile_key(first["model_version"], "near-other"))
        assert recomputed is not None
        direct.set(key, recomputed)
        assert c.get("/profile/near").json()["user_id"] == "near"
        metrics = c.get("/metrics").text
        assert "utpm_near_cache_hits_total 1.0" in metrics and other.status_code == 200
        time.sleep(0.6)
        assert c.get("/profile/near").json()["user_id"] == "near-other"  # now from Redis
        # Redis gone: what was read in the last 500 ms is still answered, then 503.
        redis_server.stop()
        try:
            assert c.get("/profile/near").status_code == 200
            time.sleep(0.6)
            g = c.get("/profile/near")
            assert g.status_code == 503 and "cache is unavailable" in g.json()["detail"]
        finally:
            redis_server.start()


def test_batch_endpoint_and_its_limit(client: TestClient) -> None:
    from service.schemas import MAX_USERS_PER_CALL

    users = [{"user_id": f"b{i}", "features": USER, "k": 2} for i in range(3)]
    r = client.post("/profiles", json={"users": users})
    assert r.status_code == 200 and [p["user_id"] for p in r.json()["profiles"]] == ["b0", "b1", "b2"]
    assert client.get("/profile/b2").json()["cached"] is True
    many = [{"user_id": f"m{i}"} for i in range(MAX_USERS_PER_CALL + 1)]
    r = client.post("/profiles", json={"users": many})
    problem = assert_problem(r, 422, "validation")
    assert f"users: List should have at most {MAX_USERS_PER_CALL} items" in problem["detail"], problem


def test_cache_expiry(bundles: dict[str, Path], redis_server: RedisServer) -> None:
    with TestClient(create_app(settings_for(bundles["a"], redis_server, cache_ttl_ms=1000))) as c:
        post(c, "short-lived")
        assert c.get("/profile/short-lived").status_code == 200
        time.sleep(1.3)
        assert c.get("/profile/short-lived").status_code == 404


def test_embedded_cache_without_redis(bundles: dict[str, Path]) -> None:
    with TestClient(create_app(settings_for(bundles["a"], None))) as c:
        post(c, "mem")
        assert c.get("/profile/mem").json()["cached"] is True
        assert c.get("/readyz").json()["cache"] == {"kind": "memory", "reachable": True}  # no breaker: no Redis


def test_health_ready_and_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "alive"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["cache"] == {"kind": "redis", "reachable": True, "breaker": "closed"}
    assert ready["device"] == {"requested": "auto", "execution_provider": "CPUExecutionProvider", "index": "cpu"}
    post(client, "m1")
    client.get("/profile/m1")
    client.get("/profile/none")
    client.delete("/profile/none")
    client.request("BREW", "/profile/none")  # a made-up method is counted, under "other"
    text = client.get("/metrics").text
    for needle in (
        'utpm_request_seconds_count{method="POST",route="/profile",status="2xx"}',
        'utpm_request_seconds_count{method="GET",route="/profile/{user_id}",status="4xx"}',
        'utpm_request_seconds_count{method="DELETE",route="/profile/{user_id}",status="2xx"}',
        'utpm_request_seconds_count{method="other",route="/profile/{user_id}",status="4xx"}',
        'utpm_stage_seconds_count{stage="model"}',
        'utpm_stage_seconds_count{stage="index"}',
        'utpm_stage_seconds_count{stage="parse"}',
        "utpm_batch_size_count",
        'utpm_cache_requests_total{result="hit"}',
        'utpm_cache_requests_total{result="miss"}',
        'utpm_errors_total{kind="not_cached"}',
    ):
        assert needle in text, needle
    assert client.get("/docs").status_code == 200
    assert "/profile/{user_id}" in client.get("/openapi.json").json()["paths"]


def test_redis_outage_post_still_answers_get_is_503_then_recovers(
    redis_only: TestClient, redis_server: RedisServer
) -> None:
    client = redis_only
    post(client, "before")
    redis_server.stop()
    try:
        r = post(client, "during")
        assert r.status_code == 200 and r.json()["tags"]
        g = client.get("/profile/before")
        assert g.status_code == 503 and "cache is unavailable" in g.json()["detail"]
        assert client.get("/readyz").json()["status"] == "degraded"
        assert 'utpm_cache_writes_total{result="skipped"} 1.0' in client.get("/metrics").text
    finally:
        redis_server.start()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if post(client, "after").status_code == 200 and client.get("/profile/after").status_code == 200:
            break
        time.sleep(0.1)
    assert client.get("/profile/after").json()["cached"] is True
    assert client.get("/readyz").json()["status"] == "ready"


def test_admin_reload_guards(bundles: dict[str, Path], redis_server: RedisServer) -> None:
    with TestClient(create_app(settings_for(bundles["a"], redis_server, auth_keys=None))) as c:
        r = c.post("/admin/reload", json={"bundle": "b"})
        assert r.status_code == 404 and "disabled" in r.json()["detail"]
    with TestClient(create_app(settings_for(bundles["a"], redis_server))) as c:
        assert c.post("/admin/reload", json={"bundle": "b"}).status_code == 401
        assert c.post("/admin/reload", json={"bundle": "b"}, headers={"x-api-key": "wrong"}).status_code == 401
        r = c.post("/admin/reload", json={"bundle": "/etc"}, headers={"x-api-key": API_KEY})
        assert r.status_code == 422 and "outside the bundle root" in r.json()["detail"]
        r = c.post("/admin/reload", json={"bundle": "b_raw"}, headers={"x-api-key": API_KEY})  # no index built
        assert r.status_code == 422 and "current bundle keeps serving" in r.json()["detail"]
        assert str(bundles["root"]) not in r.text


def test_reload_changes_version_and_never_serves_old_profiles_as_new(
    bundles: dict[str, Path], redis_server: RedisServer
) -> None:
    with TestClient(create_app(settings_for(bundles["a"], redis_server))) as c:
        v1 = post(c, "carol").json()["model_version"]
        r = c.post("/admin/reload", json={"bundle": "b"}, headers={"x-api-key": API_KEY})
        assert r.status_code == 200, r.text
        v2 = r.json()["model_version"]
        assert r.json()["previous_version"] == v1 and v2 != v1
        stale = c.get("/profile/carol").json()  # cached under v1 only: answered as v1's, marked stale
        assert stale["stale"] is True and stale["model_version"] == v1
        assert post(c, "carol").json()["model_version"] == v2
        assert c.get("/profile/carol").json()["model_version"] == v2
        assert c.get("/readyz").json()["model_version"] == v2


def test_hot_reload_under_concurrent_requests_fails_nothing(
    bundles: dict[str, Path], redis_server: RedisServer
) -> None:
    with LiveServer(settings_for(bundles["a"], redis_server)) as url:
        stop = threading.Event()
        statuses: list[int] = []
        versions: set[str] = set()

        def hammer(n: int) -> None:
            with httpx.Client(base_url=url, timeout=10) as h:
                i = 0
                while not stop.is_set():
                    r = post(h, f"load-{n}-{i}", k=5)
                    statuses.append(r.status_code)
                    if r.status_code == 200:
                        versions.add(r.json()["model_version"])
                    i += 1

        with ThreadPoolExecutor(6) as pool:
            for n in range(6):
                pool.submit(hammer, n)
            time.sleep(0.5)
            with httpx.Client(base_url=url, timeout=30) as admin:
                for target in ("b", "a", "b"):
                    r = admin.post("/admin/reload", json={"bundle": target}, headers={"x-api-key": API_KEY})
                    assert r.status_code == 200, r.text
                    time.sleep(0.3)
            stop.set()
    assert len(statuses) > 20
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert len(versions) == 2


def test_batch_threads_search_with_the_configured_faiss_threads() -> None:
    """OpenMP's thread count is per thread: the batch threads must get FAISS_THREADS themselves."""
    import asyncio

    import faiss

    from service.batching import MicroBatcher
    from service.engine import FAISS_THREADS, init_batch_thread

    async def threads_seen(init: Any) -> int:
        batcher: MicroBatcher[int, int] = MicroBatcher(
            lambda xs: [faiss.omp_get_max_threads() for _ in xs], 4, 0.0, 16, 2, thread_init=init
        )
        batcher.start()
        try:
            return (await batcher.submit_many([1]))[0]
        finally:
            await batcher.close()

    assert asyncio.run(threads_seen(init_batch_thread)) == FAISS_THREADS


def test_a_loaded_engine_leaves_blas_one_thread(hist_bundle: Path) -> None:
    """Idle OpenBLAS workers spin: the engine's matmuls run on the calling batch thread only."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from service.config import Settings
    from service.engine import BLAS_THREADS, ProfileEngine

    with threadpool_limits(2, user_api="blas"):
        ProfileEngine.load(hist_bundle, Settings.model_validate({"bundle": str(hist_bundle)}))
        blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
        assert blas and set(blas) == {BLAS_THREADS}
