"""The cached profile: the GET response rendered once, with where each tag ends.

A cache hit is the hot path of the recall layers, so what the cache holds is the JSON body of
`GET /profile/{user}` itself, for the `cache_tags` best tags, preceded by a small index of byte
offsets. Answering with k tags is then two slices of that body (the first k tags, and the closing
fields) instead of parsing a record, building k dicts and encoding them again.

Layout (little-endian): b"P2", n (uint16), the end of each tag's object in the body (n x uint32),
the end of the tag list's last object (uint32), then the body:

    {"user_id":...,"model_version":...,"tags":[{"tag":...,"score":...},...],
     "unknown":{...},"all_unknown":false,"computed_at":"2026-11-30T19:00:00.000Z",
     "expires_at":"...","stale":false,"cached":true}

`stale` is true only when GET answers from another (older) model version's record because the
served one has none yet (`stale_response`); the record itself always says false.

The boundaries are found in orjson's output by the byte pattern between two tag objects; JSON
escapes every quote inside a string, so `},{"tag":"` can occur only between two objects.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate
from operator import add
from typing import Any

import orjson

MAGIC = b"P2"
_BETWEEN = b'},{"tag":"'
_CACHED_TRUE = b'"cached":true}'
_CACHED_FALSE = b'"cached":false}'
_FRESH_TAIL = b'"stale":false,"cached":true}'
_STALE_TAIL = b'"stale":true,"cached":true}'


@lru_cache(maxsize=16)
def _iso_seconds(seconds: int) -> str:
    # every response renders two times, mostly within the same few seconds: formatted once each
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def iso_ms(epoch_ms: int) -> str:
    """UTC ISO 8601 with milliseconds, e.g. 2026-11-30T19:00:00.000Z (fixed width, sorts as text)."""
    seconds, ms = divmod(epoch_ms, 1000)
    return f"{_iso_seconds(seconds)}.{ms:03d}Z"


class CorruptRecord(ValueError):
    """A cached value that is not a profile record of this format."""


@dataclass(frozen=True)
class RenderedProfile:
    body: bytes  # the whole GET response, every tag, "cached": true
    ends: list[int]  # ends[i]: index just past tag i's object in `body`
    list_end: int  # index of the "]" closing the tag list

    def response(self, k: int, cached: bool) -> bytes:
        """The JSON response with the first `k` tags (all of them when fewer were kept)."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        body = self.body
        if k < len(self.ends):
            body = body[: self.ends[k - 1]] + body[self.list_end :]
        if not cached:
            body = body[: -len(_CACHED_TRUE)] + _CACHED_FALSE
        return body

    def record(self) -> bytes:
        """What the cache stores."""
        n = len(self.ends)
        return struct.pack(f"<2sH{n + 1}I", MAGIC, n, *self.ends, self.list_end) + self.body


def render(
    user_id: str,
    model_version: str,
    names: Sequence[str],
    scores: Sequence[float],
    unknown: dict[str, Any],
    all_unknown: bool,
    *,
    computed_at_ms: int,
    expires_at_ms: int,
) -> RenderedProfile:
    """Render a profile once; `names` and `scores` are the kept tags, best first; times in epoch ms."""
    body = orjson.dumps(
        {
            "user_id": user_id,
            "model_version": model_version,
            "tags": [{"tag": t, "score": s} for t, s in zip(names, scores, strict=True)],
            "unknown": unknown,
            "all_unknown": all_unknown,
            "computed_at": iso_ms(computed_at_ms),
            "expires_at": iso_ms(expires_at_ms),
            "stale": False,
            "cached": True,
        }
    )
    ends: list[int] = []
    if names:
        # Tag i's object ends at the "}" opening the i-th separator: the lengths of the pieces
        # between separators, summed, plus i separators (one C-level pass, not a find per tag).
        pieces = body.split(_BETWEEN)
        step = len(_BETWEEN)
        ends = list(map(add, accumulate(map(len, pieces[:-1])), range(1, step * len(pieces), step)))
        list_end = body.index(b'}],"unknown":', ends[-1] if ends else 0) + 1
        ends.append(list_end)
    else:
        list_end = body.index(b'[],"unknown":') + 1
    if len(ends) != len(names):  # a renderer that did not write what this module expects
        raise CorruptRecord(f"found {len(ends)} tag boundaries for {len(names)} tags")
    return RenderedProfile(body, ends, list_end)


def cached_response(record: bytes, k: int) -> bytes:
    """The GET response with `k` tags from a stored record, without parsing the JSON."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if record[:2] != MAGIC or len(record) < 8:
        raise CorruptRecord("not a profile record")
    (n,) = struct.unpack_from("<H", record, 2)
    start = 4 + 4 * (n + 1)
    if len(record) < start:
        raise CorruptRecord("truncated profile record")
    if k >= n:
        return record[start:]
    (end_k,) = struct.unpack_from("<I", record, 4 + 4 * (k - 1))
    (list_end,) = struct.unpack_from("<I", record, 4 + 4 * n)
    return record[start : start + end_k] + record[start + list_end :]


def stale_response(record: bytes, k: int) -> bytes:
    """`cached_response`, marked `"stale": true`: another model version's profile served in its place."""
    body = cached_response(record, k)
    if not body.endswith(_FRESH_TAIL):
        raise CorruptRecord("profile record without the freshness fields")
    return body[: -len(_FRESH_TAIL)] + _STALE_TAIL
