"""Helpers shared by the service, reliability and load-test tests: settings, requests, a live server."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import httpx2
import uvicorn
from fastapi.testclient import TestClient

from service.config import Settings, hash_key
from service.main import create_app
from tests.conftest import RedisServer, free_port

API_KEY = "test-admin-key"
ADMIN_KEYS = f"admin:{hash_key(API_KEY)}"  # UTPM_AUTH_KEYS holds digests, never keys
# starlette's TestClient answers with httpx2's responses, the live servers' clients with httpx's
Response = httpx.Response | httpx2.Response
USER = {"clicked_tags": ["sci-fi", "dark comedy", "atmospheric"], "clicked_categories": ["Drama", "Comedy"]}


def settings_for(bundle: Path, redis: RedisServer | None, **kw: Any) -> Settings:
    # fleet sync off: the tests share one redis-server, and one test's admin calls must not steer the
    # next test's replicas (tests/service/test_fleet.py turns it on, each test in a database of its own)
    base: dict[str, Any] = {"bundle": bundle, "auth_keys": ADMIN_KEYS, "batch_max_wait_ms": 1.0, "fleet_sync": False}
    if redis is not None:
        base["redis_url"] = redis.url
    return Settings(**{**base, **kw})


def post(client: TestClient | httpx.Client, user_id: str, headers: dict[str, str] | None = None, **kw: Any) -> Response:
    return client.post("/profile", json={"user_id": user_id, "features": USER, **kw}, headers=headers)


def assert_problem(r: Response, status: int, kind: str | None = None) -> dict[str, Any]:
    """`r` is an RFC 9457 problem of `status` (and of type `kind`, when given); its body."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json", r.headers["content-type"]
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["title"] and body["detail"], body
    assert body["type"].startswith("urn:utpm:problem:"), body
    if kind is not None:
        assert body["type"] == f"urn:utpm:problem:{kind}", body
    assert body["request_id"] == r.headers["x-request-id"], body
    return body


class LiveServer:
    """The app in a real uvicorn server on a free port, in a thread: `with LiveServer(s) as url:`."""

    def __init__(self, settings: Settings) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(create_app(settings), host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
