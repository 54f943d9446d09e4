"""A caller whose key may not use a route is refused before the service receives the request's body
(service/routes/keyed.py): the app is called as ASGI with a `receive` that records being awaited."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from loadtest.loop import http_scope
from service.config import hash_key
from service.main import create_app
from service.routes import admin, experiment, feedback, health, lookup, profile
from service.routes.keyed import KeyedRoute, needs_of
from tests.conftest import RedisServer
from tests.serving import ADMIN_KEYS, API_KEY, settings_for

READ, WRITE = "keyed-reader", "keyed-writer"
KEYS = f"{ADMIN_KEYS}, read:{hash_key(READ)}, write:{hash_key(WRITE)}"
BAD_BODY = b'{"not a field": 1}'  # a 422 wherever it is read

# (route, a key whose role may not use it): every route that takes a body and a key
BODY_ROUTES = [
    ("/profile", API_KEY),  # the hot route, which checks in its own handler
    ("/profiles", READ),
    ("/profiles/lookup", API_KEY),
    ("/profiles/forget", READ),
    ("/feedback", READ),
    ("/admin/reload", WRITE),
    ("/admin/challenger", WRITE),
    ("/admin/challenger/share", WRITE),
]
RIGHT_KEY = {
    "/profile": WRITE,
    "/profiles": WRITE,
    "/profiles/lookup": READ,
    "/profiles/forget": WRITE,
    "/feedback": WRITE,
}  # the admin routes': the admin key
# routes open to everyone (the two hot routes' APIRoutes declare theirs, which their handlers check)
OPEN = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/explorer")}
ROUTERS = [r.router for r in (profile, lookup, health, admin, experiment, feedback)]


def _call(client: TestClient, path: str, key: str | None) -> tuple[int, bool]:
    """POST `BAD_BODY` to `path` through the app's ASGI interface: (status, whether the body was received)."""
    received = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal received
        received = True
        return {"type": "http.request", "body": BAD_BODY, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = http_scope("POST", path, body=BAD_BODY, headers=[(b"x-api-key", key.encode())] if key else [])
    assert client.portal is not None  # inside the client's `with`: the app's lifespan is running
    app: Any = client.app
    client.portal.call(app, scope, receive, send)
    return status, received


@pytest.fixture()
def keyed(bundles: dict[str, Path], redis_server: RedisServer) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(bundles["a"], redis_server, auth_keys=KEYS))) as c:
        yield c


@pytest.mark.parametrize(("path", "wrong_key"), BODY_ROUTES)
def test_a_caller_without_the_role_is_refused_before_the_body_is_received(
    keyed: TestClient, path: str, wrong_key: str
) -> None:
    assert _call(keyed, path, None) == (401, False)
    assert _call(keyed, path, "not-a-key") == (401, False)
    assert _call(keyed, path, wrong_key) == (403, False)
    assert _call(keyed, path, RIGHT_KEY.get(path, API_KEY)) == (422, True)  # the right key: the body is read


def test_admin_routes_off_answer_404_before_the_body_is_received(
    bundles: dict[str, Path], redis_server: RedisServer
) -> None:
    keys = f"write:{hash_key(WRITE)}"  # no admin key: the admin API is off
    with TestClient(create_app(settings_for(bundles["a"], redis_server, auth_keys=keys))) as client:
        for path in ("/admin/reload", "/admin/challenger", "/admin/challenger/share"):
            assert _call(client, path, WRITE) == (404, False)
        assert _call(client, "/profiles/forget", WRITE) == (422, True)


def test_every_route_declares_its_need_or_is_known_to_be_open(keyed: TestClient) -> None:
    app: Any = keyed.app
    routes = [r for router in ROUTERS for r in router.routes] + list(app.routes)
    declared = {(m, r.path): needs_of(r.endpoint) for r in routes if isinstance(r, APIRoute) for m in r.methods or ()}
    schema = app.openapi()
    for path, operations in schema["paths"].items():  # the routers above hold every documented route
        for method, operation in operations.items():
            need = declared[(method.upper(), path.replace("{user_id}", "{user_id:path}"))]
            assert operation.get("x-utpm-role") == need, (method, path)  # documented as checked
            assert ("security" in operation) == (need is not None)
    assert set(schema["components"]["securitySchemes"]) == {"ApiKey", "Bearer"}
    assert {route for route, need in declared.items() if need is None} == OPEN
    for r in routes:  # a need on a route of another class would never be checked
        if isinstance(r, APIRoute) and needs_of(r.endpoint) is not None:
            assert isinstance(r, KeyedRoute), r.path


@pytest.mark.parametrize(
    ("method", "path", "wrong_key", "right_key"),
    [
        ("GET", "/experiment", API_KEY, READ),
        ("GET", "/feedback/summary", API_KEY, READ),
        ("DELETE", "/profile/someone", READ, WRITE),
        ("POST", "/admin/challenger/promote", WRITE, API_KEY),
        ("DELETE", "/admin/challenger", WRITE, API_KEY),
    ],
)
def test_the_routes_without_a_body_check_their_role_too(
    keyed: TestClient, method: str, path: str, wrong_key: str, right_key: str
) -> None:
    assert keyed.request(method, path).status_code == 401
    assert keyed.request(method, path, headers={"x-api-key": wrong_key}).status_code == 403
    # the right key gets past the check: 200, or the admin API's 409 (no challenger loaded)
    assert keyed.request(method, path, headers={"x-api-key": right_key}).status_code in (200, 409)
