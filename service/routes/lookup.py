"""POST /profiles/lookup: the cached profiles of many users in one call and one Redis round trip.

A recall layer scoring a page of users asks for all of them at once; one unknown user must not
fail the call, so each user gets a status: `found` (the served version's profile), `stale` (the
most recently served other version's, see service.stale) or `missing`.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from service.ab import label
from service.cache import profile_key
from service.config import MAX_LOOKUP_USERS_CEILING
from service.errors import InvalidInput
from service.profile_record import CorruptRecord, cached_response
from service.profiles import DEFAULT_K, MAX_K
from service.responses import RenderedJSON
from service.routes.keyed import KeyedRoute, needs
from service.routes.profile import ERRORS, refuse_body_fields_in_query
from service.schemas import ProfileResponse, RequestBody, UserId
from service.stale import decode_stale
from service.state import service_state

router = APIRouter(tags=["profiles"], route_class=KeyedRoute)


class LookupRequest(RequestBody):
    user_ids: Annotated[
        list[UserId],
        Field(
            min_length=1,
            max_length=MAX_LOOKUP_USERS_CEILING,
            fail_fast=True,
            description="Users to read (at most UTPM_MAX_LOOKUP_USERS).",
        ),
    ]
    k: int | None = Field(
        None, ge=1, strict=True, description="Tags per profile (default 50; at most what was cached)."
    )


class LookupResult(BaseModel):
    user_id: str
    status: Literal["found", "stale", "missing"] = Field(
        description="found: the served model's profile; stale: the most recently served other model version's "
        "(profile.model_version says which, profile.stale is true); missing: none cached."
    )
    profile: ProfileResponse | None = Field(
        description="The profile, as GET /profile/{user_id} answers it; null when missing."
    )


class LookupResponse(BaseModel):
    model_version: str = Field(description="The model version being served.")
    results: list[LookupResult] = Field(description="One per requested user id, in the request's order.")


@router.post("/profiles/lookup", response_model=LookupResponse, responses=ERRORS)
@needs("read")
async def lookup_profiles(body: LookupRequest, request: Request) -> RenderedJSON:
    """Cached profiles of several users (found / stale / missing each), read in one cache round trip."""
    refuse_body_fields_in_query(request.scope["query_string"], LookupRequest, "POST /profiles/lookup")
    state = service_state(request)
    limit = state.settings.max_lookup_users
    if len(body.user_ids) > limit:
        raise InvalidInput(f"at most {limit} users per lookup (UTPM_MAX_LOOKUP_USERS), got {len(body.user_ids)}")
    k = DEFAULT_K if body.k is None else body.k
    if k > MAX_K:
        raise InvalidInput(f"k must be between 1 and {MAX_K}, got {k}")
    current = state.engine.version
    stale_versions: list[str] = []
    if state.settings.cache_stale_fallback and state.fallback is not None:
        stale_versions = await state.fallback.versions_for(current)
    versions = [current, *stale_versions]
    users = list(dict.fromkeys(body.user_ids))
    # A/B (service.ab): a challenger-arm user is read under the challenger's version only, as on GET.
    plans = []
    for user in users:
        engine, arm = state.experiment.pick(state.engine, user, None)
        plans.append((arm, versions if arm == "champion" else [engine.version]))
    # Issued in one loop turn, the reads share one MGET (service.cache.Coalescer).
    records = await asyncio.gather(
        *(state.cache.get(profile_key(v, u)) for u, (_, vs) in zip(users, plans, strict=True) for v in vs)
    )
    answers: dict[str, bytes] = {}
    counts = {"hit": 0, "stale": 0, "miss": 0}
    start = 0
    for user, (arm, vs) in zip(users, plans, strict=True):
        row = records[start : start + len(vs)]
        start += len(vs)
        answer = None
        if row[0] is not None:
            try:
                answer = b'"status":"found","profile":' + label(cached_response(row[0], k), arm)
                counts["hit"] += 1
            except CorruptRecord:  # not ours: a miss, as on GET
                answer = None
        if answer is None:
            stale = next((b for b in (decode_stale(r, k) for r in row[1:]) if b is not None), None)
            if stale is not None:
                answer = b'"status":"stale","profile":' + label(stale, arm)
                counts["stale"] += 1
            else:
                answer = b'"status":"missing","profile":null'
                counts["miss"] += 1
        answers[user] = answer
    for result, n in counts.items():
        if n:
            state.metrics.cache_requests.labels(result).inc(n)
    parts = [b'{"user_id":' + orjson.dumps(u) + b"," + answers[u] + b"}" for u in body.user_ids]
    return RenderedJSON(b'{"model_version":' + orjson.dumps(current) + b',"results":[' + b",".join(parts) + b"]}")
