"""POST /profile, GET /profile/{user_id}, POST /profiles."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request

from service.ab import label, pinned
from service.engine import ProfileEngine
from service.errors import InvalidInput
from service.profiles import compute_profiles, read_profile
from service.responses import RenderedJSON
from service.schemas import ProfileRequest, ProfileResponse, ProfilesRequest, ProfilesResponse
from service.state import service_state

# The hot routes take the state from the request rather than through `Depends`: FastAPI solves
# a dependency on every request, and a cache hit is short enough for that to show.
router = APIRouter(tags=["profiles"])

# Users per POST /profiles: half the default model queue, so one call cannot fill it alone.
MAX_USERS_PER_CALL = 256

# Error responses per route (bodies: application/problem+json, see service/errors.py); the
# OpenAPI schema gets the Problem schema for each from `service.main.problem_openapi`.
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "API key missing or unknown (only when keys are configured)."},
    403: {"description": "The API key's role does not allow this."},
}
ERRORS: dict[int | str, dict[str, Any]] = {
    **AUTH_ERRORS,
    413: {"description": "Body too large."},
    422: {"description": "Invalid input (unknown field, bad type, k out of range)."},
    500: {"description": "Internal error (the body names only the request id)."},
    503: {"description": "Overloaded (Retry-After) or cache unavailable (Retry-After)."},
}


@router.post("/profile", response_model=ProfileResponse, responses=ERRORS)
async def post_profile(body: ProfileRequest, request: Request) -> RenderedJSON:
    """Compute a user's top-K interest tags from their features, cache it (unless `store` is false), return it."""
    state = service_state(request)
    state.auth.check(request, "write" if body.store else "compute")
    engine, arm = state.experiment.pick(state.engine, body.user_id, pinned(request.scope))
    (profile,) = await compute_profiles(state, [body], engine)
    return RenderedJSON(label(profile, arm))


@router.post("/profiles", response_model=ProfilesResponse, responses=ERRORS)
async def post_profiles(body: ProfilesRequest, request: Request) -> RenderedJSON:
    """Profiles for several users in one call (at most 256)."""
    state = service_state(request)
    state.auth.check(request, "write" if any(u.store for u in body.users) else "compute")
    if len(body.users) > MAX_USERS_PER_CALL:
        raise InvalidInput(f"at most {MAX_USERS_PER_CALL} users per call, got {len(body.users)}")
    # Users of one call may fall in both A/B arms: one model run per arm, answered in the call's order.
    pin = pinned(request.scope)
    arms: dict[str, tuple[ProfileEngine, list[int]]] = {}
    for i, user in enumerate(body.users):
        engine, arm = state.experiment.pick(state.engine, user.user_id, pin)
        arms.setdefault(arm, (engine, []))[1].append(i)
    computed = await asyncio.gather(
        *(compute_profiles(state, [body.users[i] for i in rows], engine) for engine, rows in arms.values())
    )
    out = [b""] * len(body.users)
    for name, (_, rows), profiles in zip(arms, arms.values(), computed, strict=True):
        for i, profile in zip(rows, profiles, strict=True):
            out[i] = label(profile, name)
    return RenderedJSON(b'{"profiles":[' + b",".join(out) + b"]}")


# `:path`: a user id may hold `/` (`team/alice`, sent as `/profile/team/alice` or `team%2Falice`).
@router.get(
    "/profile/{user_id:path}",
    response_model=ProfileResponse,
    responses={404: {"description": "Not cached, or expired."}, **ERRORS},
)
async def get_profile(
    request: Request,
    user_id: Annotated[str, Path(min_length=1, max_length=256)],
    k: Annotated[int | None, Query(ge=1, description="Number of tags (at most what was cached).")] = None,
) -> RenderedJSON:
    """The cached profile of a user, as last computed by the bundle now being served."""
    state = service_state(request)
    if not state.auth.reads_open:
        state.auth.check(request, "read")
    pin = pinned(request.scope)
    engine, arm = state.experiment.pick(state.engine, user_id, pin)
    # The champion's own read keeps the stale fallback; a challenger's or pinned read never does.
    body = await read_profile(state, user_id, k, engine if arm == "challenger" or pin is not None else None)
    return RenderedJSON(label(body, arm))
