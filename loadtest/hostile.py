"""Bad request bodies just under the service's body limit, one per route and shape that takes a body.

Each is valid JSON in which as much as fits is wrong: what a careless or hostile client can make the
service read within its limits. `utpm bench reliability bad-bodies` sends them while other clients
load the service; `tests/service/test_bad_body_bounds.py` checks each gets its 422.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from service.middleware import MAX_BODY_BYTES


@dataclass(frozen=True)
class HostileBody:
    name: str
    path: str
    body: bytes


def _filled(head: str, item: str, tail: str, size: int) -> bytes:
    """`head` + `item`, `item`, ... (comma-separated; `{i}` in `item` numbered) + `tail`, at most `size` bytes."""
    parts, used, i = [head], len(head) + len(tail), 0
    while True:
        piece = ("," if i else "") + item.format(i=i)
        if used + len(piece) > size:
            break
        parts.append(piece)
        used += len(piece)
        i += 1
    return ("".join(parts) + tail).encode()


def hostile_bodies(size: int = MAX_BODY_BYTES - 1024) -> Iterator[HostileBody]:
    """The bodies, each at most `size` bytes (default: 1 KiB under the body limit)."""
    profile = '{"user_id": "hostile", "features": {'
    yield HostileBody("profile: a number for every field", "/profile", _filled(profile, '"f{i}": 1', "}}", size))
    yield HostileBody(
        "profile: one field, a list of numbers", "/profile", _filled(profile + '"clicked_tags": [', "1", "]}}", size)
    )
    yield HostileBody(
        "profile: one field, a string for every count",
        "/profile",
        _filled(profile + '"clicked_tags": {', '"t{i}": "x"', "}}}", size),
    )
    yield HostileBody("profile: unknown keys", "/profile", _filled('{"user_id": "hostile", ', '"x{i}": 1', "}", size))
    yield HostileBody(
        "profile: a count object with unknown keys",
        "/profile",
        _filled(profile + '"clicked_tags": {"t": {"count": 1, ', '"x{i}": 1', "}}}}", size),
    )
    yield HostileBody(
        "profiles: users with a number for a field",
        "/profiles",
        _filled('{"users": [', '{{"user_id": "u{i}", "features": {{"f": 1}}}}', "]}", size),
    )
    yield HostileBody(
        "lookup: a number for every user id", "/profiles/lookup", _filled('{"user_ids": [', "1", "]}", size)
    )
    yield HostileBody(
        "forget: a number for every user id", "/profiles/forget", _filled('{"user_ids": [', "1", "]}", size)
    )
    yield HostileBody("feedback: a number for every event", "/feedback", _filled('{"events": [', "1", "]}", size))
