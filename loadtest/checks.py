"""Checks on a profile response body: under load a wrong answer is a failure, not only a non-200."""

from __future__ import annotations

import itertools
from typing import Any


def profile_problem(body: Any, *, user_id: str, k: int, cached: bool) -> str | None:
    """What is wrong with a `POST /profile` or `GET /profile/{user}` body, or None if nothing.

    Checked: the user id is echoed, a model version is present, exactly `k` tags, each a
    {tag: str, score: number}, no tag twice, scores best first, and the `cached` flag is `cached`.
    """
    if not isinstance(body, dict):
        return f"body is {type(body).__name__}, not an object"
    if body.get("user_id") != user_id:
        return f"user_id {body.get('user_id')!r} != {user_id!r}"
    version = body.get("model_version")
    if not isinstance(version, str) or not version:
        return "model_version missing"
    if body.get("cached") is not cached:
        return f"cached is {body.get('cached')!r}, expected {cached}"
    tags = body.get("tags")
    if not isinstance(tags, list):
        return "tags is not a list"
    if len(tags) != k:
        return f"{len(tags)} tags, expected {k}"
    names, scores = [], []
    for t in tags:
        if not isinstance(t, dict) or not isinstance(t.get("tag"), str) or not isinstance(t.get("score"), int | float):
            return f"malformed tag entry {t!r}"
        names.append(t["tag"])
        scores.append(t["score"])
    if len(set(names)) != len(names):
        return "a tag is listed twice"
    if any(a < b for a, b in itertools.pairwise(scores)):
        return "scores are not sorted best first"
    return None
