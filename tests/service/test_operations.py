"""Operating the service: API keys, problem details in the OpenAPI schema, the Redis circuit breaker
under a black-holed Redis, device reporting, retired settings and optional tracing."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service.breaker import BREAKER_FAILURES
from service.cache import profile_key
from service.config import Settings, hash_key
from service.main import create_app
from tests.conftest import RedisServer, free_port
from tests.netutil import DelayProxy
from tests.serving import ADMIN_KEYS, API_KEY, USER, assert_problem, post, settings_for

READ, WRITE = "reader-key-1", "writer-key-1"
KEYS = f"{ADMIN_KEYS}, read:{hash_key(READ)}\nwrite:{hash_key(WRITE)}  # the ingest job"


@pytest.fixture()
def keyed(bundles: dict[str, Path], redis_server: RedisServer) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(bundles["a"], redis_server, auth_keys=KEYS, near_cache_ttl_ms=0))) as c:
        yield c


def _stored(redis_server: RedisServer, version: str, user: str) -> bool:
    return bool(redis.Redis(port=redis_server.port).exists(profile_key(version, user)))


def test_writes_need_a_write_key_401_without_or_unknown_403_with_the_wrong_role(
    keyed: TestClient, redis_server: RedisServer
) -> None:
    r = post(keyed, "w-none")
    assert "X-API-Key" in assert_problem(r, 401, "unauthorized")["detail"]
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert_problem(post(keyed, "w-wrong", headers={"x-api-key": "guessed"}), 401, "unauthorized")
    assert "(read)" in assert_problem(post(keyed, "w-read", headers={"x-api-key": READ}), 403, "forbidden")["detail"]
    assert_problem(post(keyed, "w-admin", headers={"x-api-key": API_KEY}), 403, "forbidden")
    many = {"users": [{"user_id": "w-batch", "features": USER}]}
    assert_problem(keyed.post("/profiles", json=many), 401, "unauthorized")
    ok = post(keyed, "w-ok", headers={"x-api-key": WRITE})
    assert ok.status_code == 200 and _stored(redis_server, ok.json()["model_version"], "w-ok")
    bearer = post(keyed, "w-bearer", headers={"authorization": f"Bearer {WRITE}"})
    assert bearer.status_code == 200
    for user in ("w-none", "w-wrong", "w-read", "w-admin", "w-batch"):
        assert not _stored(redis_server, ok.json()["model_version"], user)


def test_reads_open_by_default_and_keyed_once_a_read_key_is_configured(
    keyed: TestClient, bundles: dict[str, Path], redis_server: RedisServer
) -> None:
    post(keyed, "r-user", headers={"x-api-key": WRITE})
    assert_problem(keyed.get("/profile/r-user"), 401, "unauthorized")
    assert_problem(keyed.get("/profile/r-user", headers={"x-api-key": "nope"}), 401, "unauthorized")
    assert_problem(keyed.get("/profile/r-user", headers={"x-api-key": API_KEY}), 403, "forbidden")
    assert keyed.get("/profile/r-user", headers={"x-api-key": READ}).json()["cached"] is True
    assert keyed.get("/profile/r-user", headers={"x-api-key": WRITE}).status_code == 200
    assert keyed.get("/readyz").json()["auth"] == {
        "reads": "key",
        "writes": "key",
        "compute_without_store": "as writes",
        "admin": "key",
    }
    only_writes = f"write:{hash_key(WRITE)}"
    with TestClient(create_app(settings_for(bundles["a"], redis_server, auth_keys=only_writes))) as c:
        assert c.get("/profile/r-user").status_code == 200  # reads stay open


def test_store_false_computes_without_writing_and_can_be_opened_without_a_write_key(
    keyed: TestClient, bundles: dict[str, Path], redis_server: RedisServer
) -> None:
    r = post(keyed, "s-keyed", store=False, headers={"x-api-key": WRITE})
    assert r.status_code == 200 and len(r.json()["tags"]) == 50 and r.json()["cached"] is False
    version = r.json()["model_version"]
    assert not _stored(redis_server, version, "s-keyed")
    assert_problem(keyed.get("/profile/s-keyed", headers={"x-api-key": READ}), 404, "not_cached")
    assert_problem(post(keyed, "s-anon", store=False), 401, "unauthorized")  # compute counts as a write
    assert 'utpm_cache_writes_total{result="ok"} 0.0' in keyed.get("/metrics").text

    s = settings_for(bundles["a"], redis_server, auth_keys=f"write:{hash_key(WRITE)}", auth_open_compute=True)
    with TestClient(create_app(s)) as c:
        r = post(c, "s-open", store=False)
        assert r.status_code == 200 and r.json()["tags"]
        assert not _stored(redis_server, version, "s-open")
        assert_problem(post(c, "s-open"), 401, "unauthorized")  # storing still needs the key
        batch = {"users": [{"user_id": "s-b1", "features": USER, "store": False}]}
        assert c.post("/profiles", json=batch).status_code == 200
        assert not _stored(redis_server, version, "s-b1")


def test_auth_keys_hold_digests_and_a_plain_key_is_refused_without_being_echoed(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(ValidationError) as e:
        Settings(bundle=bundles["a"], auth_keys="write:my-secret-plain-key")
    assert "SHA-256" in str(e.value) and "my-secret-plain-key" not in str(e.value)
    with pytest.raises(ValidationError, match="role must be one of"):
        Settings(bundle=bundles["a"], auth_keys=f"root:{hash_key('x')}")
    key_file = tmp_path / "keys"
    key_file.write_text(f"# rotated 2026-11\nwrite:{hash_key(WRITE)}\n")
    assert Settings(bundle=bundles["a"], auth_keys=f"@{key_file}").key_roles == {hash_key(WRITE): "write"}
    printed = subprocess.run(
        [sys.executable, "-m", "service.auth", WRITE], check=True, capture_output=True, text=True
    ).stdout
    assert printed.strip() == hash_key(WRITE)


def test_the_engine_sets_the_switch_interval_as_it_sets_its_thread_counts(bundles: dict[str, Path]) -> None:
    from service.engine import ProfileEngine

    before = sys.getswitchinterval()
    try:
        ProfileEngine.load(bundles["a"], settings_for(bundles["a"], None, gil_switch_interval_ms=0.5))
        assert sys.getswitchinterval() == pytest.approx(0.0005)
    finally:
        sys.setswitchinterval(before)
    with pytest.raises(ValidationError, match="gil_switch_interval_ms"):
        settings_for(bundles["a"], None, gil_switch_interval_ms=0)


def test_retired_settings_stop_the_start_up_naming_the_new_one(
    bundles: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UTPM_MAX_PENDING", "4")
    monkeypatch.setenv("UTPM_REDIS_URL", "redis://:hunter2@127.0.0.1:1/0")
    with pytest.raises(ValidationError) as e:
        Settings(bundle=bundles["a"])
    assert "renamed UTPM_MAX_PENDING_USERS" in str(e.value) and "hunter2" not in str(e.value)


def test_invalid_settings_stop_the_start_up_in_one_line_naming_each_variable(
    bundles: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UTPM_BUNDLE", str(bundles["a"]))
    monkeypatch.setenv("UTPM_BATCH_MAX_USERS", "abc")
    monkeypatch.setenv("UTPM_REDIS_URL", "localhost:6379")  # no scheme: redis-py would fail only at start-up
    # the images start the service with `uvicorn --factory service.main:create_app`
    with pytest.raises(SystemExit) as e:
        create_app()
    message = str(e.value)
    assert message.startswith("error: invalid settings: ") and "\n" not in message, message
    assert "UTPM_BATCH_MAX_USERS: Input should be a valid integer" in message
    assert "UTPM_REDIS_URL: the Redis URL must start with one of redis://" in message


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        # before: a traceback from pydantic-settings' JSON parser (SettingsError), not one line
        ("UTPM_CORS_ORIGINS", "[https://app.example", "a JSON list of origins that does not parse"),
        # before: accepted, and a browser's Origin never has a path, so CORS silently matched nothing
        ("UTPM_CORS_ORIGINS", "https://app.example/", "is not an origin"),
        ("UTPM_CORS_ORIGINS", "app.example", "is not an origin"),
        # before: accepted; a lone request then waited forever for a batch to fill
        ("UTPM_BATCH_MAX_WAIT_MS", "inf", "less than or equal to 1000"),
        # before: accepted; Redis refused every write (PX out of range), so nothing was ever cached
        ("UTPM_CACHE_TTL_MS", str(10**19), "less than or equal to 315360000000"),
        # before: accepted, "tracing on", and every export failed later
        ("UTPM_OTLP_ENDPOINT", "collector:4318", "expected an OTLP/HTTP URL"),
        # before: accepted; every /admin/reload was then refused as outside the root
        ("UTPM_BUNDLE_ROOT", "/nonexistent/bundles", "is not a directory"),
    ],
)
def test_settings_that_could_only_fail_later_stop_the_start_up(
    bundles: dict[str, Path], monkeypatch: pytest.MonkeyPatch, variable: str, value: str, problem: str
) -> None:
    monkeypatch.setenv("UTPM_BUNDLE", str(bundles["a"]))
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as e:
        create_app()
    message = str(e.value)
    assert message.startswith(f"error: invalid settings: {variable}: ") and problem in message, message


def test_a_misspelt_setting_is_named_at_start_up(
    bundles: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before, UTPM_BATCH_MAX_USER=16 (no S) was ignored without a word and the service ran with 8."""
    from service.config import misspelt_settings

    monkeypatch.setenv("UTPM_BUNDLE", str(bundles["a"]))
    monkeypatch.setenv("UTPM_BATCH_MAX_USER", "16")
    monkeypatch.setenv("UTPM_LT_K", "5")  # the load test's own variables are no slip
    create_app()
    logged = capsys.readouterr().err
    assert "UTPM_BATCH_MAX_USER is not a setting and is ignored; did you mean UTPM_BATCH_MAX_USERS?" in logged
    assert "UTPM_LT_K" not in logged
    assert misspelt_settings({"UTPM_REDIS_URI": "x", "UTPM_BUNDLE_DIR": "x", "UTPM_SOMETHING_ELSE": "x"}) == [
        "UTPM_REDIS_URI is not a setting and is ignored; did you mean UTPM_REDIS_URL?"
    ]


def test_a_redis_setting_without_a_redis_is_named_at_start_up(
    bundles: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before, UTPM_REDIS_TIMEOUT_MS without UTPM_REDIS_URL (the URL forgotten, or set in another
    environment) started the embedded cache without a word."""
    monkeypatch.setenv("UTPM_BUNDLE", str(bundles["a"]))
    monkeypatch.setenv("UTPM_REDIS_TIMEOUT_MS", "50")
    monkeypatch.setenv("UTPM_NEAR_CACHE_TTL_MS", "0")
    create_app()
    logged = capsys.readouterr().err
    for name in ("UTPM_NEAR_CACHE_TTL_MS", "UTPM_REDIS_TIMEOUT_MS"):
        assert f"{name} is set but read only with a Redis (UTPM_REDIS_URL), which is not set" in logged
    monkeypatch.setenv("UTPM_REDIS_URL", "redis://127.0.0.1:1/0")  # with a Redis (not reached here): no warning
    create_app()
    assert "read only with a Redis" not in capsys.readouterr().err


def test_cors_origins_are_read_comma_separated_or_as_a_json_list(bundles: dict[str, Path]) -> None:
    for given in ("https://a.example, http://b.example:8080", '["https://a.example", "http://b.example:8080"]'):
        assert Settings(bundle=bundles["a"], cors_origins=given).cors_origins == [
            "https://a.example",
            "http://b.example:8080",
        ]
    assert Settings(bundle=bundles["a"], cors_origins="*").cors_origins == ["*"]
    assert Settings(bundle=bundles["a"], cors_origins="").cors_origins == []


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://:s3cret@10.0.0.5:26379/utpm/x",  # db not a number
        "redis+sentinel://10.0.0.5/utpm",  # no port
        "redis+sentinel://10.0.0.5:26379",  # no master name
        "redis+sentinel://10.0.0.5:26379/utpm?ssl_ca_certs=/ca.pem&sentinel_password=s3cret",  # TLS without rediss
        "rediss+sentinel://10.0.0.5:26379/utpm?sentinel_pasword=s3cret",  # a misspelt parameter
    ],
)
def test_a_malformed_sentinel_url_is_an_invalid_setting_that_names_the_form(bundles: dict[str, Path], url: str) -> None:
    with pytest.raises(ValidationError) as e:
        Settings(bundle=bundles["a"], redis_url=url)
    assert "sentinel://" in str(e.value) and "s3cret" not in str(e.value)


def test_sentinel_urls_parse_and_redact() -> None:
    from service.redis_client import kind_of, parse_sentinel, redact_url

    url = "redis+sentinel://app:p%40ss@10.0.0.5:26379,10.0.0.6:26380/utpm/3"
    target = parse_sentinel(url)
    assert target.sentinels == [("10.0.0.5", 26379), ("10.0.0.6", 26380)] and (target.master, target.db) == ("utpm", 3)
    assert (target.username, target.password) == ("app", "p@ss") and kind_of(url) == "redis-sentinel"
    assert redact_url(url) == "redis+sentinel://app:***@10.0.0.5:26379,10.0.0.6:26380/utpm/3"
    assert (
        parse_sentinel("redis+sentinel://h:1/m").db == 0 and parse_sentinel("redis+sentinel://h:1/m").password is None
    )
    assert (
        redact_url("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
        and redact_url("redis://h:6379") == "redis://h:6379"
    )

    # the Sentinels' own password and TLS: rediss+sentinel:// for both, the query for the rest
    tls = "rediss+sentinel://:mpw@h:1/utpm/2?sentinel_password=s%26pw&ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=required"
    target = parse_sentinel(tls)
    assert (target.password, target.sentinel_auth) == ("mpw", {"password": "s&pw"}) and kind_of(tls) == "redis-sentinel"
    assert target.tls == {"ssl": True, "ssl_ca_certs": "/etc/ca.pem", "ssl_cert_reqs": "required"}
    assert parse_sentinel("redis+sentinel://h:1/m").tls == {} and parse_sentinel("rediss+sentinel://h:1/m").tls == {
        "ssl": True
    }
    assert redact_url(tls) == (
        "rediss+sentinel://:***@h:1/utpm/2?sentinel_password=***&ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=required"
    )
    assert redact_url("redis://h:6379/0?password=pw") == "redis://h:6379/0?password=***"


def test_openapi_documents_every_error_as_problem_json(client_plain: TestClient) -> None:
    schema = client_plain.get("/openapi.json").json()
    assert "Problem" in schema["components"]["schemas"]
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    seen = 0
    for path, operations in schema["paths"].items():
        for method, op in operations.items():
            for code, response in op["responses"].items():
                if code[0] in "45":
                    seen += 1
                    content = response["content"]
                    assert list(content) == ["application/problem+json"], (path, method, code)
                    assert content["application/problem+json"]["schema"]["$ref"].endswith("/Problem")
    assert seen >= 15
    assert {"401", "403", "413", "422", "503"} <= set(schema["paths"]["/profile"]["post"]["responses"])


@pytest.fixture()
def client_plain(bundles: dict[str, Path]) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(bundles["a"], None))) as c:
        yield c


def test_blackholed_redis_opens_the_breaker_get_fails_fast_then_recovers(
    bundles: dict[str, Path], redis_server: RedisServer
) -> None:
    """Redis stops answering (packets dropped, connections kept): after BREAKER_FAILURES timeouts
    GET answers 503 at once with Retry-After, POST still answers from the model, and both recover
    once Redis answers again."""
    proxy = DelayProxy(redis_server.port)
    url = f"redis://127.0.0.1:{proxy.port}/0"
    try:
        s = settings_for(bundles["a"], None, redis_url=url, redis_timeout_ms=100, near_cache_ttl_ms=0)
        with TestClient(create_app(s)) as c:
            assert post(c, "bh").status_code == 200 and c.get("/profile/bh").status_code == 200
            proxy.blackhole = True
            for _ in range(BREAKER_FAILURES):  # each of these waits out the Redis timeout
                assert_problem(c.get("/profile/bh"), 503, "cache_unavailable")
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                r = c.get("/profile/bh")
                times.append(time.perf_counter() - t0)
                body = assert_problem(r, 503, "cache_unavailable")
                assert "circuit breaker open" in body["detail"] and int(r.headers["retry-after"]) >= 1
            assert max(times) < 0.05, times
            t0 = time.perf_counter()
            p = post(c, "bh-during")
            assert p.status_code == 200 and p.json()["tags"] and time.perf_counter() - t0 < 0.5
            ready = c.get("/readyz").json()
            assert ready["status"] == "degraded" and ready["cache"]["breaker"] in ("open", "half_open")
            metrics = c.get("/metrics").text
            assert 'utpm_redis_breaker_transitions_total{state="open"}' in metrics
            assert 'utpm_cache_writes_total{result="skipped"}' in metrics

            proxy.blackhole = False
            deadline = time.monotonic() + 10
            while c.get("/profile/bh").status_code != 200:
                assert time.monotonic() < deadline, "did not recover within 10 s of Redis answering again"
                time.sleep(0.1)
            assert post(c, "bh-after").status_code == 200 and c.get("/profile/bh-after").json()["cached"] is True
            metrics = c.get("/metrics").text
            assert 'utpm_redis_breaker_state{utpm_redis_breaker_state="closed"} 1.0' in metrics
            assert c.get("/readyz").json()["cache"]["breaker"] == "closed"
    finally:
        proxy.close()


def test_device_cuda_refuses_to_start_without_a_gpu(bundles: dict[str, Path]) -> None:
    from service.engine import DeviceUnavailable

    with (
        pytest.raises(DeviceUnavailable, match="UTPM_DEVICE=cuda, but the model runs on CPUExecutionProvider"),
        TestClient(create_app(settings_for(bundles["a"], None, device="cuda"))),
    ):
        pass
    with TestClient(create_app(settings_for(bundles["a"], None, device="cpu"))) as c:
        device = c.get("/readyz").json()["device"]
        assert device == {"requested": "cpu", "execution_provider": "CPUExecutionProvider", "index": "cpu"}


def test_a_corrupt_bundle_stops_the_server_in_one_line_without_a_traceback(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    """What the preflight of `utpm serve` cannot see (a file whose content no longer matches the
    manifest) stops uvicorn's start-up with one log line naming the file, and a non-zero exit: run
    here as the images run it (`uvicorn --factory`); `utpm serve` runs the same app in process."""
    import shutil

    corrupt = tmp_path / "bundle"
    shutil.copytree(bundles["a"], corrupt)
    model = corrupt / "model.onnx"
    model.write_bytes(model.read_bytes()[:-16])
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("UTPM_")}, "UTPM_BUNDLE": str(corrupt)}
    command = [sys.executable, "-m", "uvicorn", "--factory", "service.main:create_app", "--port", str(free_port())]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    assert f"not starting: {model}: content hash" in out and "Traceback" not in out, out


def test_process_metrics_are_exported(client_plain: TestClient) -> None:
    text = client_plain.get("/metrics").text
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds"):
        assert name in text, name


def test_tracing_is_off_and_its_sdk_not_imported_by_default() -> None:
    # FastAPI itself imports opentelemetry-api when it is installed; the SDK and exporter are ours
    code = (
        "import sys, service.main, service.tracing; "
        "assert not any(m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter')) for m in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_fastapis_own_telemetry_is_off_unless_the_process_configures_opentelemetry() -> None:
    pytest.importorskip("opentelemetry.sdk")
    # a fresh process each: a global provider can be set only once
    off = (
        "import inspect, fastapi; from service.main import _fastapi_telemetry as t; "
        "off = {'telemetry': {'tracing': False, 'metrics': False, 'logs': False}}; "
        "assert t() == (off if 'telemetry' in inspect.signature(fastapi.FastAPI).parameters else {}), t()"
    )
    on_provider = (
        "from opentelemetry import trace; from opentelemetry.sdk.trace import TracerProvider; "
        "trace.set_tracer_provider(TracerProvider()); "
        "from service.main import _fastapi_telemetry as t; assert t() == {}, t()"
    )
    on_env = "from service.main import _fastapi_telemetry as t; assert t() == {}, t()"
    env = {k: v for k, v in os.environ.items() if k != "FASTAPI_OTEL_AUTO_CONFIGURE"}
    subprocess.run([sys.executable, "-c", off], check=True, env=env)
    subprocess.run([sys.executable, "-c", on_provider], check=True, env=env)
    subprocess.run([sys.executable, "-c", on_env], check=True, env={**env, "FASTAPI_OTEL_AUTO_CONFIGURE": "true"})


def test_stage_spans_reach_a_configured_otlp_endpoint(bundles: dict[str, Path]) -> None:
    pytest.importorskip("opentelemetry.sdk")
    received: list[bytes] = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["content-length"])))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", free_port()), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_port}/v1/traces"
        with TestClient(create_app(settings_for(bundles["a"], None, otlp_endpoint=endpoint))) as c:
            caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"  # W3C traceparent
            assert post(c, "traced", headers={"traceparent": caller}).status_code == 200
            assert c.get("/profile/traced").status_code == 200
        payload = b"".join(received)  # the lifespan's end flushed the batch
        for name in (b"utpm.compute", b"utpm.decode", b"utpm.queue", b"utpm.model", b"utpm.index", b"utpm.read"):
            assert name in payload, name
        assert bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736") in payload  # joined the caller's trace
    finally:
        server.shutdown()
