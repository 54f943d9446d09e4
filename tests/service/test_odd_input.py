"""Odd values in every field of every route: never a 5xx, always a JSON (problem) body.

Each route gets each odd value in each of its body fields, raw bodies that are not JSON objects,
and odd paths and query strings; with the admin key, so that validation is reached, not refused by
auth. The specific 422s are asserted by the routes' own tests; this one asserts that nothing falls
through to a 500."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from service.main import create_app
from tests.serving import API_KEY, settings_for

HEADERS = {"X-API-Key": API_KEY, "content-type": "application/json"}
ODD: list[Any] = [None, 1, -1, 1e308, "x", "", [], {}, [1], {"a": 1}, True, "NaN", 10**30, "\U0001f642" * 1000]
BODIES: dict[str, Callable[[Any], list[Any]]] = {
    "/profile": lambda v: [
        {"user_id": "a", "features": {"clicked_tags": v}},
        {"user_id": "a", "features": {"clicked_tags": {"x": v}}},
        {"user_id": v, "features": {}},
        {"user_id": "a", "features": {}, "k": v},
        {"user_id": "a", "features": {}, "explain": v},
        {"user_id": "a", "features": {}, "store": v},
        v,
    ],
    "/profiles": lambda v: [{"users": v}, {"users": [v]}, {"users": [{"user_id": "a", "features": v}]}, v],
    "/profiles/lookup": lambda v: [{"user_ids": v}, {"user_ids": [v]}, {"user_ids": ["a"], "k": v}, v],
    "/profiles/forget": lambda v: [{"user_ids": v}, {"user_ids": [v]}, v],
    "/feedback": lambda v: [{"events": v}, {"events": [v]}, {"events": [{"user_id": "u", "items": v}]}, v],
    "/admin/reload": lambda v: [{"bundle": v}, v],
    "/admin/challenger": lambda v: [{"bundle": v}, {"bundle": "a", "share": v}, v],
    "/admin/challenger/share": lambda v: [{"share": v}, v],
}
RAW = [b"{", b"", b"\xff\xfe", b"[]", b"null", b'{"user_id": "a", "features": {}, "k": NaN}']
PATHS = ["/profile/" + "x" * 300, "/profile/%00", "/profile/a?k=0", "/profile/a?k=" + "9" * 20, "/profile/a?k=1&k=2"]


def test_no_odd_input_is_answered_with_a_5xx(bundles: dict[str, Path]) -> None:
    statuses: Counter[int] = Counter()
    bad = []

    def check(what: str, r: Any) -> None:
        statuses[r.status_code] += 1
        if r.status_code >= 500 or "json" not in r.headers.get("content-type", ""):
            bad.append(f"{what}: {r.status_code} {r.text[:200]}")

    with TestClient(create_app(settings_for(bundles["a"], None)), raise_server_exceptions=False) as c:
        for route, bodies in BODIES.items():
            for value in ODD:
                for body in bodies(value):
                    check(
                        f"POST {route} {json.dumps(body)[:80]}",
                        c.post(route, content=json.dumps(body), headers=HEADERS),
                    )
            for raw in RAW:
                check(f"POST {route} {raw!r}", c.post(route, content=raw, headers=HEADERS))
        for path in PATHS:
            check(f"GET {path[:60]}", c.get(path, headers=HEADERS))
            check(f"DELETE {path[:60]}", c.delete(path, headers=HEADERS))
        for query in ["", "?day=x", "?day=2026-13-45", "?version=" + "x" * 5000]:
            check(f"GET /feedback/summary{query[:40]}", c.get("/feedback/summary" + query, headers=HEADERS))
    assert not bad, "\n".join(bad)
    assert statuses[422] > 300, statuses  # validation was reached, not refused before it
