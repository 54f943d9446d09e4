"""Reliability and security: slow/absent Redis, Redis Cluster, TLS + password, overload shedding,
bad input (schemathesis over the OpenAPI schema, hypothesis over the feature mapping)."""

from __future__ import annotations

import json
import logging
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok

from loadtest.procs import Redis, free_port
from service.main import create_app
from tests.bundles import perturb_onnx
from tests.netutil import DelayProxy
from tests.serving import API_KEY, USER, LiveServer, Response, post, settings_for


def test_slow_redis_never_stalls_a_request_beyond_the_timeout(bundles: dict[str, Path], redis_server: Redis) -> None:
    proxy = DelayProxy(redis_server.port, delay_s=0.0)
    url = f"redis://127.0.0.1:{proxy.port}/0"
    try:
        s = settings_for(bundles["a"], None, redis_url=url, redis_timeout_ms=100, near_cache_ttl_ms=0)
        with TestClient(create_app(s)) as c:
            assert post(c, "fast").status_code == 200
            assert c.get("/profile/fast").status_code == 200
            proxy.delay_s = 2.0  # every Redis reply now takes 2 s
            t0 = time.monotonic()
            r = post(c, "slow")
            post_s = time.monotonic() - t0
            t0 = time.monotonic()
            g = c.get("/profile/fast")
            get_s = time.monotonic() - t0
            assert r.status_code == 200 and r.json()["tags"]
            assert g.status_code == 503
            # bounded by the 100 ms Redis timeout (plus model time), far below the 2 s Redis delay
            assert post_s < 1.0 and get_s < 1.0, (post_s, get_s)
            assert 'utpm_cache_writes_total{result="skipped"} 1.0' in c.get("/metrics").text
            proxy.delay_s = 0.0
            deadline = time.monotonic() + 5
            while post(c, "back").status_code != 200 or c.get("/profile/back").status_code != 200:
                assert time.monotonic() < deadline, "cache did not recover within 5 s"
                time.sleep(0.1)
    finally:
        proxy.close()


def cluster_port() -> int:
    """A free port whose cluster-bus port (port + 10000) is free too and below 65536."""
    import socket

    for _ in range(200):
        p = free_port()
        if p + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p + 10000))
            except OSError:
                continue
        return p
    raise RuntimeError("no free port pair for a cluster node")


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    """Three redis-server nodes in cluster mode, slots spread by redis-cli --cluster create."""
    nodes = []
    for _ in range(3):
        p, d = cluster_port(), tmp_path_factory.mktemp("node")
        nodes.append(Redis(p, d, ["--cluster-enabled", "yes", "--cluster-config-file", str(d / "nodes.conf")]).start())
    ports = [n.port for n in nodes]
    try:
        create = ["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports], "--cluster-replicas", "0"]
        subprocess.run([*create, "--cluster-yes"], check=True, capture_output=True, timeout=30)
        deadline = time.monotonic() + 10
        while redis.Redis(host="127.0.0.1", port=ports[0]).cluster("info").get("cluster_state") != "ok":
            assert time.monotonic() < deadline, "cluster did not become ready"
            time.sleep(0.1)
        yield ports
    finally:
        for node in nodes:
            node.stop()


def test_cache_on_a_three_node_redis_cluster(bundles: dict[str, Path], redis_cluster: list[int]) -> None:
    url = f"redis+cluster://127.0.0.1:{redis_cluster[0]}"
    with TestClient(create_app(settings_for(bundles["a"], None, redis_url=url))) as c:
        assert c.get("/readyz").json()["cache"] == {"kind": "redis-cluster", "reachable": True, "breaker": "closed"}
        for i in range(30):
            assert post(c, f"cluster-user-{i}", k=3).status_code == 200
        for i in range(30):
            r = c.get(f"/profile/cluster-user-{i}")
            assert r.status_code == 200 and r.json()["cached"] is True
        # a user's keys under two versions sit in different slots: one DELETE removes both
        assert c.post("/admin/reload", json={"bundle": "b"}, headers={"x-api-key": API_KEY}).status_code == 200
        # a lookup reads keys of many slots (and their stale fallbacks) in one call
        ids = [f"cluster-user-{i}" for i in range(30)] + ["nobody"]
        statuses = [x["status"] for x in c.post("/profiles/lookup", json={"user_ids": ids}).json()["results"]]
        assert statuses == ["stale"] * 30 + ["missing"]
        for i in range(5):
            assert post(c, f"cluster-user-{i}", k=3).status_code == 200
            r = c.delete(f"/profile/cluster-user-{i}")
            assert r.status_code == 200 and r.json()["deleted"] == 2, r.text
            assert c.get(f"/profile/cluster-user-{i}").status_code == 404
        # the bulk form: one pipeline across nodes, each user's count; their feedback sets go too
        events = []
        for i in range(5, 10):
            served = post(c, f"cluster-user-{i}", k=3).json()
            events.append({"user_id": f"cluster-user-{i}", "k": 3, "items": [{"tags": [served["tags"][0]["tag"]]}]})
        assert c.post("/feedback", json={"events": events}).json()["counted"] == 5
        totals = c.get("/feedback/summary?days=1").json()["arms"]["champion"]["totals"]
        assert (totals["users"], totals["sum_b"], totals["sum_c"]) == (5, 5, 0)  # the scripts ran on the cluster
        r = c.post("/profiles/forget", json={"user_ids": [f"cluster-user-{i}" for i in range(5, 10)]})
        assert r.status_code == 200 and [x["deleted"] for x in r.json()["results"]] == [2] * 5, r.text
        assert r.json()["feedback_sets"] == 5  # a browsed set each (nothing clicked)
    # profiles only: the service may keep other keys (e.g. a version registry) beside them
    sizes = [
        len(list(redis.Redis(host="127.0.0.1", port=p).scan_iter("utpm:profile:*:cluster-user-*")))
        for p in redis_cluster
    ]
    assert sum(sizes) == 20 and all(s > 0 for s in sizes), sizes  # keys spread across slots and nodes


def test_batch_job_writes_to_a_redis_cluster_what_the_service_serves(
    bundles: dict[str, Path], redis_cluster: list[int], tmp_path: Path
) -> None:
    """`utpm profile batch` with a redis+cluster:// URL: its pipelined SETs spread over the nodes, and the
    service reads every one as a cached hit."""
    from batch import BatchJob, run_batch
    from batch.sources import JsonlSource

    users = [f"batch-cluster-{i}" for i in range(25)]
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"user_id": u, "features": USER}) + "\n" for u in users))
    url = f"redis+cluster://127.0.0.1:{redis_cluster[0]}"
    now_ms = int(time.time() * 1000)
    job = BatchJob(JsonlSource(rows), bundles["a"], url, tmp_path / "job", k=5, chunk_users=10, computed_at_ms=now_ms)
    summary = run_batch(job, workers=1)
    assert (summary.rows, summary.written, summary.rejected) == (25, 25, 0)
    with TestClient(create_app(settings_for(bundles["a"], None, redis_url=url, near_cache_ttl_ms=0))) as c:
        for u in users:
            r = c.get(f"/profile/{u}")
            assert r.status_code == 200 and r.json()["cached"] is True and len(r.json()["tags"]) == 5, r.text


@pytest.fixture()
def sentinel_pair(tmp_path: Path) -> Iterator[tuple[Redis, Redis, int]]:
    """A master, its replica and one Sentinel watching them as "utpm" (quorum 1, down after 1 s)."""
    from mirakuru import TCPExecutor

    master = Redis(workdir=tmp_path).start()
    replica = Redis(workdir=tmp_path, args=["--replicaof", "127.0.0.1", str(master.port)]).start()
    port = free_port()
    conf = tmp_path / "sentinel.conf"  # Sentinel rewrites its file: one of its own
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor utpm 127.0.0.1 {master.port} 1\n"
        "sentinel down-after-milliseconds utpm 1000\nsentinel failover-timeout utpm 10000\n"
    )
    sentinel = TCPExecutor(["redis-server", str(conf), "--sentinel"], host="127.0.0.1", port=port, timeout=10)
    sentinel.start()
    try:
        deadline = time.monotonic() + 10  # the Sentinel has found the replica: a failover has somewhere to go
        while not redis.Redis(port=port).sentinel_slaves("utpm"):
            assert time.monotonic() < deadline, "the Sentinel did not discover the replica"
            time.sleep(0.1)
        yield master, replica, port
    finally:
        sentinel.stop()
        replica.stop()
        master.stop()


def test_service_and_batch_follow_the_master_through_a_sentinel_failover(
    bundles: dict[str, Path], sentinel_pair: tuple[Redis, Redis, int], tmp_path: Path
) -> None:
    """`redis+sentinel://`: the service finds the master through the Sentinel, and after the master dies
    and the Sentinel promotes the replica, it writes and reads there without a restart."""
    from batch.writer import RedisWriter

    master, replica, port = sentinel_pair
    url = f"redis+sentinel://127.0.0.1:{port}/utpm/0"
    with TestClient(create_app(settings_for(bundles["a"], None, redis_url=url, near_cache_ttl_ms=0))) as c:
        assert c.get("/readyz").json()["cache"] == {"kind": "redis-sentinel", "reachable": True, "breaker": "closed"}
        served = post(c, "sentinel-user", k=3).json()
        assert c.get("/profile/sentinel-user").json()["cached"] is True
        event = {"user_id": "sentinel-user", "k": 3, "items": [{"tags": [served["tags"][0]["tag"]], "clicked": True}]}
        assert c.post("/feedback", json={"events": [event]}).json()["counted"] == 1  # its script runs there too
        assert redis.Redis(port=master.port).exists(f"utpm:profile:p2:{served['model_version']}:sentinel-user")
        writer = RedisWriter(url)
        writer.write([("utpm:test:batch-sentinel", b"v")], int(time.time() * 1000) + 60_000)
        assert redis.Redis(port=master.port).get("utpm:test:batch-sentinel") == b"v"
        writer.close()

        master.kill()
        deadline = time.monotonic() + 30
        while (
            redis.Redis(port=port).execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "utpm")[1]
            != str(replica.port).encode()
        ):
            assert time.monotonic() < deadline, "the Sentinel did not promote the replica"
            time.sleep(0.2)
        deadline = time.monotonic() + 15  # the breaker's longest backoff and a reconnection
        while post(c, "after-failover", k=3).status_code != 200 or c.get("/profile/after-failover").status_code != 200:
            assert time.monotonic() < deadline, "the service did not follow the new master"
            time.sleep(0.5)
        assert redis.Redis(port=replica.port).exists(f"utpm:profile:p2:{served['model_version']}:after-failover")


def _tls_options(d: Path) -> tuple[str, list[str]]:
    """A self-signed certificate for 127.0.0.1 (its own CA) and the redis-server options that serve it
    without asking clients for certificates: (certificate file, options)."""
    key, cert = str(d / "key.pem"), str(d / "cert.pem")
    openssl = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1"]
    subprocess.run(
        [*openssl, "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True
    )
    options = ["--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", cert, "--tls-auth-clients", "no"]
    return cert, options


def _wait_for_tls(client: redis.Redis, what: str) -> None:
    deadline = time.monotonic() + 10
    while True:  # the TLS port accepts connections a moment before it answers
        try:
            client.ping()
            return
        except (redis.ConnectionError, redis.TimeoutError):
            assert time.monotonic() < deadline, f"{what} did not start"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str, Path]]:
    """redis-server with a password and TLS only (no plain port); yields (port, password, CA file)."""
    d = tmp_path_factory.mktemp("tls")
    cert, tls = _tls_options(d)
    port, password = free_port(), "pa55-w0rd-secret"
    server = Redis(port, d, ["--port", "0", "--tls-port", str(port), *tls, "--requirepass", password]).start()
    try:
        _wait_for_tls(
            redis.Redis(host="127.0.0.1", port=port, password=password, ssl=True, ssl_ca_certs=cert), "TLS redis"
        )
        yield port, password, d / "cert.pem"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[int], str, Path]]:
    """Three cluster nodes with TLS only, on the client port and the cluster bus, and one password (as a
    managed cluster with encryption in transit has); yields (ports, password, CA file)."""
    d = tmp_path_factory.mktemp("tls-cluster")
    cert, tls = _tls_options(d)
    password = "c1uster-secret"
    nodes = []
    for _ in range(3):
        p, nd = cluster_port(), tmp_path_factory.mktemp("tls-node")
        args = ["--port", "0", "--tls-port", str(p), *tls, "--tls-cluster", "yes", "--requirepass", password]
        args += ["--masterauth", password, "--cluster-enabled", "yes", "--cluster-config-file", str(nd / "nodes.conf")]
        nodes.append(Redis(p, nd, args).start())
    ports = [n.port for n in nodes]
    try:
        client = redis.Redis(host="127.0.0.1", port=ports[0], password=password, ssl=True, ssl_ca_certs=cert)
        _wait_for_tls(client, "the TLS cluster node")
        create = ["redis-cli", "--tls", "--cacert", cert, "-a", password, "--no-auth-warning", "--cluster", "create"]
        create += [*[f"127.0.0.1:{p}" for p in ports], "--cluster-replicas", "0", "--cluster-yes"]
        subprocess.run(create, check=True, capture_output=True, timeout=30)
        deadline = time.monotonic() + 10
        while client.cluster("info").get("cluster_state") != "ok":
            assert time.monotonic() < deadline, "the TLS cluster did not become ready"
            time.sleep(0.1)
        yield ports, password, Path(cert)
    finally:
        for node in nodes:
            node.stop()


def test_cache_and_batch_on_a_tls_cluster_with_a_password(
    bundles: dict[str, Path], tls_cluster: tuple[list[int], str, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    """`rediss+cluster://:PW@host:port/?ssl_ca_certs=...`: profiles, feedback scripts and the batch writer's
    pipelines across the nodes of a TLS-only cluster; the password never reaches the logs or /readyz."""
    from batch.writer import RedisWriter

    ports, password, ca = tls_cluster
    url = f"rediss+cluster://:{password}@127.0.0.1:{ports[0]}/?ssl_ca_certs={ca}"
    with TestClient(create_app(settings_for(bundles["a"], None, redis_url=url, log_level="DEBUG"))) as c:
        ready = c.get("/readyz")
        assert ready.json()["cache"] == {"kind": "redis-cluster", "reachable": True, "breaker": "closed"}
        assert password not in ready.text
        events = []
        for i in range(12):
            served = post(c, f"tls-cluster-user-{i}", k=3).json()
            events.append({"user_id": f"tls-cluster-user-{i}", "k": 3, "items": [{"tags": [served["tags"][0]["tag"]]}]})
        for i in range(12):
            assert c.get(f"/profile/tls-cluster-user-{i}").json()["cached"] is True
        assert c.post("/feedback", json={"events": events}).json()["counted"] == 12
    writer = RedisWriter(url)
    writer.write([(f"utpm:test:tls-cluster-{i}", b"v") for i in range(20)], int(time.time() * 1000) + 60_000)
    writer.close()
    nodes = [redis.Redis(host="127.0.0.1", port=p, password=password, ssl=True, ssl_ca_certs=str(ca)) for p in ports]
    sizes = [len(list(n.scan_iter("utpm:profile:*:tls-cluster-user-*"))) for n in nodes]
    assert sum(sizes) == 12 and sum(1 for x in sizes if x) >= 2, sizes  # spread over the nodes
    assert sum(len(list(n.scan_iter("utpm:test:tls-cluster-*"))) for n in nodes) == 20
    out, err = capfd.readouterr()
    assert "serving bundle" in err and password not in out + err
    logging.getLogger("utpm").handlers.clear()


@pytest.fixture()
def tls_sentinel(tmp_path: Path) -> Iterator[tuple[int, int, str, str, Path]]:
    """A master and a Sentinel, each with a password of its own and TLS only (the Sentinel watches the master
    over TLS, `tls-replication yes`); yields (master port, Sentinel port, master password, Sentinel
    password, CA file)."""
    from mirakuru import TCPExecutor

    cert, tls_args = _tls_options(tmp_path)
    tls = "".join(f"{name[2:]} {value}\n" for name, value in zip(tls_args[::2], tls_args[1::2], strict=True))
    master_port, master_pw, sentinel_pw = free_port(), "m4ster-secret", "s3ntinel-secret"
    args = ["--port", "0", "--tls-port", str(master_port), *tls_args, "--requirepass", master_pw]
    master = Redis(master_port, tmp_path, args).start()
    port = free_port()
    conf = tmp_path / "sentinel.conf"  # Sentinel rewrites its file: one of its own
    conf.write_text(
        f"port 0\ntls-port {port}\nbind 127.0.0.1\ndir {tmp_path}\n{tls}tls-replication yes\n"
        f"requirepass {sentinel_pw}\nsentinel monitor utpm 127.0.0.1 {master_port} 1\n"
        f"sentinel auth-pass utpm {master_pw}\n"
    )
    sentinel = TCPExecutor(["redis-server", str(conf), "--sentinel"], host="127.0.0.1", port=port, timeout=10)
    sentinel.start()
    try:
        asking = redis.Redis(host="127.0.0.1", port=port, password=sentinel_pw, ssl=True, ssl_ca_certs=cert)
        _wait_for_tls(asking, "the TLS Sentinel")
        yield master_port, port, master_pw, sentinel_pw, Path(cert)
    finally:
        sentinel.stop()
        master.stop()


def test_tls_and_password_work_and_the_secret_never_reaches_logs(
    bundles: dict[str, Path], tls_redis: tuple[int, str, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    port, password, ca = tls_redis
    url = f"rediss://:{password}@127.0.0.1:{port}/0?ssl_ca_certs={ca}"
    with TestClient(create_app(settings_for(bundles["a"], None, redis_url=url, log_level="DEBUG"))) as c:
        assert post(c, "tls-user").status_code == 200
        assert c.get("/profile/tls-user").json()["cached"] is True
        assert password not in c.get("/readyz").text
    wrong = url.replace(password, "not-the-password")
    with TestClient(create_app(settings_for(bundles["a"], None, redis_url=wrong))) as c:
        assert post(c, "tls-user-2").status_code == 200  # the model still answers
        assert c.get("/profile/tls-user").status_code == 503
    out, err = capfd.readouterr()
    assert "serving bundle" in err  # the start-up line was logged...
    assert password not in out + err  # ...without the password
    logging.getLogger("utpm").handlers.clear()


def test_overload_is_shed_early_with_retry_after(bundles: dict[str, Path]) -> None:
    s = settings_for(
        bundles["a"], None, max_pending_users=4, batch_max_users=2, batch_max_wait_ms=20.0, batch_workers=1
    )
    with LiveServer(s) as url, httpx.Client(base_url=url, timeout=10) as probe:
        assert post(probe, "warm").status_code == 200

        def one(i: int) -> Response:
            with httpx.Client(base_url=url, timeout=10) as h:
                return post(h, f"burst-{i}", k=5)

        with ThreadPoolExecutor(32) as pool:
            responses = list(pool.map(one, range(96)))
        codes = [r.status_code for r in responses]
        assert set(codes) <= {200, 503}, codes
        shed = [r for r in responses if r.status_code == 503]
        assert shed, "nothing was shed at 8x the queue bound"
        assert all(r.headers.get("retry-after") == "1" and "overloaded" in r.json()["detail"] for r in shed)
        assert post(probe, "after-burst").status_code == 200  # nothing crashed
        assert 'utpm_errors_total{kind="overloaded"}' in probe.get("/metrics").text


def test_requests_beyond_the_inflight_bound_are_shed_before_parsing(bundles: dict[str, Path]) -> None:
    s = settings_for(
        bundles["a"], None, max_inflight_requests=3, batch_max_wait_ms=30.0, batch_max_users=2, batch_workers=1
    )
    with LiveServer(s) as url, httpx.Client(base_url=url, timeout=10) as probe:

        def one(i: int) -> Response:
            with httpx.Client(base_url=url, timeout=10) as h:
                return post(h, f"flood-{i}", k=5)

        with ThreadPoolExecutor(24) as pool:
            responses = list(pool.map(one, range(72)))
        shed = [r for r in responses if r.status_code == 503]
        assert {r.status_code for r in responses} <= {200, 503} and shed
        assert all("requests in flight" in r.json()["detail"] and r.headers["retry-after"] == "1" for r in shed)
        assert probe.get("/healthz").status_code == 200 and post(probe, "calm").status_code == 200


@pytest.fixture(scope="module")
def live_url(bundles: dict[str, Path]) -> Iterator[str]:
    with LiveServer(settings_for(bundles["a"], None)) as url:
        yield url


def test_openapi_fuzzing_finds_no_server_error(live_url: str) -> None:
    """schemathesis generates requests for every operation of the service's own OpenAPI schema."""
    api = schemathesis.openapi.from_url(f"{live_url}/openapi.json")
    operations = []
    for result in api.get_all_operations():
        assert isinstance(result, Ok), result.err()  # the schema's every operation loads
        operations.append(result.ok())
    assert len(operations) >= 6

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
        def call(case: Any) -> None:
            response = case.call()
            case.validate_response(response, checks=[not_a_server_error])

        call()


json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=12,
)
feature_values = st.one_of(
    st.text(max_size=30),
    st.lists(st.text(alphabet=st.characters(codec="utf-8"), max_size=30), max_size=60),
    st.lists(st.sampled_from(["sci-fi", "", "sci-fi", " ", "atmospheric"]), max_size=30),  # empties, duplicates
    json_value,
)


@pytest.fixture(scope="module")
def mem_client(bundles: dict[str, Path]) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(bundles["a"], None))) as c:
        yield c


@given(
    features=st.dictionaries(
        st.sampled_from(["clicked_tags", "clicked_categories", "unclicked_tags", "other"]), feature_values, max_size=4
    ),
    k=st.integers(min_value=-5, max_value=2000),
)
@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
def test_feature_mapping_never_fails_with_a_server_error(
    mem_client: TestClient, features: dict[str, Any], k: int
) -> None:
    # json.dumps writes NaN/Infinity as bare literals, as a sloppy client would
    raw = json.dumps({"user_id": "fuzz", "features": features, "k": k}, allow_nan=True)
    r = mem_client.post("/profile", content=raw, headers={"content-type": "application/json"})
    assert r.status_code in (200, 422), r.text
    if r.status_code == 200:
        body = r.json()
        real_tags = mem_client.get("/readyz").json()["tags"] - 2  # ids 0, 1 are padding and OOV
        assert len(body["tags"]) == min(k, real_tags) and body["user_id"] == "fuzz"
        for name, unknown in body["unknown"].items():
            assert name in features and all(isinstance(v, str) for v in unknown)


def test_hostile_bodies_get_clear_4xx(mem_client: TestClient) -> None:
    seen = []
    raw = ('{"user_id": "d", "features": {"clicked_tags": ' + "[" * 5000 + '"x"' + "]" * 5000 + "}}").encode()
    r = mem_client.post("/profile", content=raw, headers={"content-type": "application/json"})
    assert r.status_code in (400, 413, 422) and "detail" in r.json(), r.text
    seen.append(r)
    r = mem_client.post("/profile", content=b"\xff\xfe garbage", headers={"content-type": "application/json"})
    assert r.status_code == 422
    seen.append(r)
    r = mem_client.post("/profile", content=b'{"user_id": "x"}', headers={"content-type": "application/xml"})
    assert r.status_code == 422
    seen.append(r)
    r = mem_client.post("/profile", json={"user_id": "x", "k": 10**30})
    assert r.status_code == 422
    seen.append(r)
    r = mem_client.post("/profile", json={"user_id": "x" * 300})
    assert r.status_code == 422
    seen.append(r)
    seen += [
        mem_client.get("/nope"),
        mem_client.post("/profile", content=b"[", headers={"content-type": "application/json"}),
    ]
    for r in seen:
        assert "Traceback" not in r.text and "/work" not in r.text and "site-packages" not in r.text
        assert r.headers["content-type"] == "application/problem+json", r.text  # RFC 9457 on every path
        assert r.json()["type"].startswith("urn:utpm:problem:") and r.json()["status"] == r.status_code


def test_cors_is_off_unless_configured(bundles: dict[str, Path]) -> None:
    headers = {"origin": "https://evil.example", "access-control-request-method": "POST"}
    with TestClient(create_app(settings_for(bundles["a"], None))) as c:
        assert "access-control-allow-origin" not in c.options("/profile", headers=headers).headers
    with TestClient(create_app(settings_for(bundles["a"], None, cors_origins=["https://app.example"]))) as c:
        ok = c.options("/profile", headers={**headers, "origin": "https://app.example"})
        assert ok.headers.get("access-control-allow-origin") == "https://app.example"


def _rehash(bundle: Path) -> None:
    """Make a tampered bundle self-consistent again (hashes, version), then index it, so that only the
    tampering itself can be what the service refuses."""
    from index.build import build_index
    from model_export.manifest import Manifest, content_version, hash_files

    m = Manifest.read(bundle)
    m.files = hash_files(bundle, m.files)
    m.bundle_version = content_version(m.files)
    m.write(bundle)
    build_index(bundle, kind="flat")


def _tamper_hash(b: Path) -> None:
    (b / "tags.json").write_text((b / "tags.json").read_text() + " ")


def _tamper_dimension(b: Path) -> None:
    import numpy as np

    e = np.load(b / "tag_embeddings.npy")
    np.save(b / "tag_embeddings.npy", np.concatenate([e, e[:, :1]], axis=1))
    from model_export.manifest import Manifest, content_version, hash_files

    m = Manifest.read(b)
    m.files = hash_files(b, m.files)
    m.bundle_version = content_version(m.files)
    m.write(b)


def _tamper_metric(b: Path) -> None:
    import faiss
    import numpy as np

    e = np.ascontiguousarray(np.load(b / "tag_embeddings.npy"), dtype=np.float32)
    l2 = faiss.IndexFlatL2(e.shape[1])
    l2.add(e)
    faiss.write_index(l2, str(b / "index.faiss"))


def _tamper_onnx(b: Path) -> None:
    perturb_onnx(b / "model.onnx", b / "model.onnx")
    _rehash(b)


@pytest.mark.parametrize(
    ("tamper", "needle"),
    [
        (_tamper_hash, "does not match the manifest"),
        (_tamper_dimension, "dimension"),
        (_tamper_metric, "inner product"),
        (_tamper_onnx, "does not reproduce the PyTorch model"),
    ],
    ids=["manifest-hash", "dimension", "metric", "onnx-parity"],
)
def test_corrupt_or_mismatched_bundles_are_refused_and_the_old_one_keeps_serving(
    bundles: dict[str, Path], tamper: Any, needle: str
) -> None:
    import shutil

    bad = bundles["root"] / f"bad-{tamper.__name__}"
    if bad.exists():
        shutil.rmtree(bad)
    shutil.copytree(bundles["a"], bad)
    tamper(bad)
    with TestClient(create_app(settings_for(bundles["a"], None))) as c:
        before = post(c, "steady").json()
        r = c.post("/admin/reload", json={"bundle": bad.name}, headers={"x-api-key": "test-admin-key"})
        assert r.status_code == 422, r.text
        assert "current bundle keeps serving" in r.json()["detail"]
        assert needle.lower() in r.json()["detail"].lower(), r.json()["detail"]
        after = post(c, "steady").json()
        assert after["model_version"] == before["model_version"] and after["tags"] == before["tags"]


def test_a_sentinel_with_its_own_password_over_tls(
    bundles: dict[str, Path], tls_sentinel: tuple[int, int, str, str, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    """`rediss+sentinel://:MASTER_PW@host:port/utpm/0?sentinel_password=...&ssl_ca_certs=...`: the service and
    the batch writer find the master through a Sentinel that wants a password, over TLS to both, and no
    password reaches the logs; a wrong Sentinel password leaves the cache unreachable, not the service."""
    from batch.writer import RedisWriter

    master_port, port, master_pw, sentinel_pw, ca = tls_sentinel
    url = f"rediss+sentinel://:{master_pw}@127.0.0.1:{port}/utpm/0?sentinel_password={sentinel_pw}&ssl_ca_certs={ca}"
    master = redis.Redis(host="127.0.0.1", port=master_port, password=master_pw, ssl=True, ssl_ca_certs=str(ca))
    with TestClient(create_app(settings_for(bundles["a"], None, redis_url=url, log_level="DEBUG"))) as c:
        assert c.get("/readyz").json()["cache"] == {"kind": "redis-sentinel", "reachable": True, "breaker": "closed"}
        served = post(c, "tls-sentinel-user", k=3).json()
        assert c.get("/profile/tls-sentinel-user").json()["cached"] is True
        assert master.exists(f"utpm:profile:p2:{served['model_version']}:tls-sentinel-user")
    writer = RedisWriter(url)
    writer.write([("utpm:test:batch-tls-sentinel", b"v")], int(time.time() * 1000) + 60_000)
    writer.close()
    assert master.get("utpm:test:batch-tls-sentinel") == b"v"

    wrong = url.replace(sentinel_pw, "not-the-sentinel-password")
    with TestClient(create_app(settings_for(bundles["a"], None, redis_url=wrong))) as c:
        assert post(c, "tls-sentinel-user-2").status_code == 200  # the model still answers
        assert c.get("/profile/tls-sentinel-user").status_code == 503
    out, err = capfd.readouterr()
    assert "serving bundle" in err and master_pw not in out + err and sentinel_pw not in out + err
    logging.getLogger("utpm").handlers.clear()
