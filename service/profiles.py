"""Computing, caching and reading profiles: what the routes call."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from service.cache import CacheUnavailable, profile_key
from service.engine import ComputedProfile, EncodedUser, ProfileEngine
from service.errors import InvalidInput, NotCached
from service.profile_record import CorruptRecord, cached_response
from service.schemas import ProfileRequest
from service.stale import read_stale
from service.state import ServiceState

log = logging.getLogger("utpm.service")

# The API's k: 50 tags by default, at most 1000 (a recall layer takes tens to hundreds).
DEFAULT_K = 50
MAX_K = 1000


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
    if computed.model_part is not None and computed.history_part is not None:  # utpm-hist: score = model + history
        n = len(tags)
        tags = [
            {**t, "model": float(m), "history": float(h)}
            for t, m, h in zip(tags, computed.model_part[:n].tolist(), computed.history_part[:n].tolist(), strict=True)
        ]
    return {"heads": int(merge.shape[0]), "fields": fields, "tag_scores": tags}


async def compute_profiles(
    state: ServiceState, requests: Sequence[ProfileRequest], engine: ProfileEngine | None = None
) -> list[bytes]:
    """Encode, batch through the model and the index, cache (unless `store` is false); the JSON
    responses, one per request. `engine`: an A/B arm's (service.ab); default the champion."""
    settings, metrics = state.settings, state.metrics
    engine = engine or state.engine  # one bundle for the whole request, even if a reload happens meanwhile
    async with engine.lease():
        t0 = time.perf_counter()
        encoded = []
        for r in requests:
            k = DEFAULT_K if r.k is None else r.k
            if k > MAX_K:
                raise InvalidInput(f"k must be between 1 and {MAX_K}, got {k}")
            encoded.append(engine.encode(r.features, max(k, settings.cache_tags), r.explain))
        t1 = time.perf_counter()
        metrics.stage["parse"].observe(t1 - t0)
        assert engine.batcher is not None
        computed = await engine.batcher.submit_many(encoded)
        t2 = time.perf_counter()
        timings = computed[0].timings  # the batch's own, measured in its worker thread
        queue_s = max(0.0, t2 - t1 - timings.encode_s - timings.model_s - timings.index_s)
        if timings.encode_s:
            metrics.stage["encode"].observe(timings.encode_s)
        metrics.stage["model"].observe(timings.model_s)
        metrics.stage["index"].observe(timings.index_s)
        metrics.stage["queue"].observe(queue_s)
        responses, writes = [], []
        now_ms = time.time_ns() // 1_000_000
        for req, user, prof in zip(requests, encoded, computed, strict=True):
            k = DEFAULT_K if req.k is None else req.k
            rendered = engine.render(req.user_id, user, prof, now_ms, now_ms + settings.cache_ttl_ms)
            if req.explain:
                body = orjson.loads(rendered.response(k, cached=False))
                body["explanation"] = _explanation(engine, user, prof, body["tags"])
                responses.append(orjson.dumps(body))
            else:
                responses.append(rendered.response(k, cached=False))
            if req.store:
                writes.append(_write(state, profile_key(engine.version, req.user_id), rendered.record()))
        if len(writes) == 1:  # the usual request: awaited in place, no Task for gather to wrap it in
            await writes[0]
        elif writes:
            await asyncio.gather(*writes)
        t3 = time.perf_counter()
        metrics.stage["cache"].observe(t3 - t2)
    if state.tracing is not None:
        t_encode = t1 + queue_s
        t_model = t_encode + timings.encode_s
        stages = [
            ("decode", t0, t1),
            ("queue", t1, t_encode),
            *([("encode", t_encode, t_model)] if timings.encode_s else []),
            ("model", t_model, t_model + timings.model_s),
            ("index", t_model + timings.model_s, t2),
            ("cache", t2, t3),
        ]
        state.tracing.record("utpm.compute", stages, users=len(requests), model_version=engine.version)
    return responses


async def _write(state: ServiceState, key: str, value: bytes) -> None:
    try:
        await state.cache.set(key, value, state.settings.cache_ttl_ms)
        state.metrics.cache_write["ok"].inc()
    except CacheUnavailable:
        state.metrics.cache_write["skipped"].inc()  # the caller still gets the profile


async def read_profile(state: ServiceState, user_id: str, k: int | None, engine: ProfileEngine | None = None) -> bytes:
    """The cached profile of `user_id` (JSON, `k` tags) under the bundle being served; NotCached -> 404.
    `engine`: an A/B arm's (service.ab), whose misses never fall back to another version's profile."""
    champion = engine is None
    engine = engine or state.engine
    k = DEFAULT_K if k is None else k
    if not 1 <= k <= MAX_K:
        raise InvalidInput(f"k must be between 1 and {MAX_K}, got {k}")
    t0 = time.perf_counter()
    try:
        stored = await state.cache.get(profile_key(engine.version, user_id))
    except CacheUnavailable:
        state.metrics.cache_result["error"].inc()
        raise
    finally:
        t1 = time.perf_counter()
        state.metrics.stage["cache"].observe(t1 - t0)
        if state.tracing is not None:
            state.tracing.record("utpm.read", [("cache", t0, t1)], model_version=engine.version)
    if stored is None and champion and state.settings.cache_stale_fallback and state.fallback is not None:
        body = await read_stale(state.cache, state.fallback, engine.version, user_id, k)
        if body is not None:
            state.metrics.cache_requests.labels("stale").inc()
            return body
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


@dataclass
class Forgotten:
    profiles: dict[str, int]  # cached profiles removed, per distinct user id
    versions: list[str]  # the versions checked
    feedback_sets: int  # the feedback store's per-user sets removed


async def delete_profiles(state: ServiceState, user_ids: Sequence[str]) -> Forgotten:
    """Forget users: their cached profiles under every version that may hold one (the versions served
    now, both A/B arms, and those in the version registry, service.stale) in one cache round trip,
    then their per-user feedback sets under those versions (the aggregates hold no user ids)."""
    versions = state.experiment.versions(state.engine)
    if state.fallback is not None:
        versions = list(dict.fromkeys([*versions, *await state.fallback.registered()]))
    users = list(dict.fromkeys(user_ids))
    found = await state.cache.delete([profile_key(v, u) for u in users for v in versions])
    n = len(versions)
    profiles = {u: sum(found[i * n : (i + 1) * n]) for i, u in enumerate(users)}
    sets = await state.feedback.forget(users, versions) if state.feedback is not None else 0
    log.info(
        "forgot %d user(s): %d cached profile(s), %d feedback set(s) (versions checked: %d)",
        len(users),
        sum(profiles.values()),
        sets,
        n,
    )
    return Forgotten(profiles, versions, sets)
