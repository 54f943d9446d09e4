"""Computing, caching and reading profiles: what the routes call."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import orjson

from service.cache import CacheUnavailable, profile_key
from service.engine import ComputedProfile, EncodedUser, ProfileEngine
from service.errors import InvalidInput, NotCached
from service.profile_record import CorruptRecord, cached_response, render
from service.schemas import ProfileRequest
from service.state import ServiceState

log = logging.getLogger("utpm.service")


def _explanation(
    engine: ProfileEngine, user: EncodedUser, computed: ComputedProfile, tags: list[dict[str, Any]]
) -> dict[str, Any]:
    assert computed.attention is not None
    merge = computed.attention["__merge__"]  # (heads, M)
    fields = []
    for f, name in enumerate(engine.field_names):
        weights = computed.attention[name]  # (heads, H_f)
        values = [
            {"value": engine.value_name(name, int(i)), "weights": [float(w) for w in weights[:, pos]]}
            for pos, (i, m) in enumerate(zip(user.ids[name], user.mask[name], strict=True))
            if m > 0
        ]
        fields.append({"field": name, "merge_weights": [float(w) for w in merge[:, f]], "values": values})
    return {"heads": int(merge.shape[0]), "fields": fields, "tag_scores": tags}


async def compute_profiles(state: ServiceState, requests: Sequence[ProfileRequest]) -> list[bytes]:
    """Encode, batch through the model and the index, cache; the JSON responses, one per request."""
    settings, metrics = state.settings, state.metrics
    engine = state.engine  # one bundle for the whole request, even if a reload happens meanwhile
    async with engine.lease():
        t0 = time.perf_counter()
        encoded = []
        for r in requests:
            k = settings.default_k if r.k is None else r.k
            if k > settings.max_k:
                raise InvalidInput(f"k must be between 1 and {settings.max_k}, got {k}")
            encoded.append(engine.encode(r.features, max(k, settings.cache_tags), r.explain))
        t1 = time.perf_counter()
        metrics.stage["parse"].observe(t1 - t0)
        assert engine.batcher is not None
        computed = await engine.batcher.submit_many(encoded)
        t2 = time.perf_counter()
        # The batch's own timings: `engine.last_timings` may already be another batch's.
        timings = computed[0].timings or engine.last_timings
        metrics.stage["model"].observe(timings.model_s)
        metrics.stage["index"].observe(timings.index_s)
        metrics.stage["queue"].observe(max(0.0, t2 - t1 - timings.model_s - timings.index_s))
        responses, writes = [], []
        tokens = engine.bundle.tags.tokens  # id -> tag name, indexed directly (no call per tag)
        for req, user, prof in zip(requests, encoded, computed, strict=True):
            k = settings.default_k if req.k is None else req.k
            names = [tokens[i] for i in prof.tag_ids.tolist()]
            # Rendered once: the response is a slice of it, the cache keeps it whole.
            rendered = render(req.user_id, engine.version, names, prof.scores.tolist(), user.unknown, user.all_unknown)
            if req.explain:
                body = orjson.loads(rendered.response(k, cached=False))
                body["explanation"] = _explanation(engine, user, prof, body["tags"])
                responses.append(orjson.dumps(body))
            else:
                responses.append(rendered.response(k, cached=False))
            writes.append(_write(state, profile_key(engine.version, req.user_id), rendered.record()))
        await asyncio.gather(*writes)
        metrics.stage["cache"].observe(time.perf_counter() - t2)
    return responses


async def _write(state: ServiceState, key: str, value: bytes) -> None:
    try:
        await state.cache.set(key, value, state.settings.cache_ttl_s)
        state.metrics.cache_write["ok"].inc()
    except CacheUnavailable:
        state.metrics.cache_write["skipped"].inc()  # the caller still gets the profile


async def read_profile(state: ServiceState, user_id: str, k: int | None) -> bytes:
    """The cached profile of `user_id` (JSON, `k` tags) under the bundle being served; NotCached -> 404."""
    settings, engine = state.settings, state.engine
    k = settings.default_k if k is None else k
    if not 1 <= k <= settings.max_k:
        raise InvalidInput(f"k must be between 1 and {settings.max_k}, got {k}")
    t0 = time.perf_counter()
    try:
        stored = await state.cache.get(profile_key(engine.version, user_id))
    except CacheUnavailable:
        state.metrics.cache_result["error"].inc()
        raise
    finally:
        state.metrics.stage["cache"].observe(time.perf_counter() - t0)
    if stored is None:
        state.metrics.cache_result["miss"].inc()
        raise NotCached(
            f"no cached profile for user {user_id!r} under model {engine.version} (never computed, "
            "expired, or computed by another model version); POST /profile computes one"
        )
    try:
        body = cached_response(stored, k)
    except CorruptRecord:
        # Not ours (another writer under our key prefix): a miss, and recomputing overwrites it.
        state.metrics.cache_result["miss"].inc()
        log.warning("unreadable cached profile for user %r; treated as a miss", user_id)
        raise NotCached(f"no readable cached profile for user {user_id!r}; POST /profile computes one") from None
    state.metrics.cache_result["hit"].inc()
    return body
