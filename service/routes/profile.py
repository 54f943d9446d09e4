"""POST /profile, GET /profile/{user_id}, POST /profiles."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request

from service.errors import InvalidInput
from service.profiles import compute_profiles, read_profile
from service.responses import RenderedJSON
from service.schemas import ErrorResponse, ProfileRequest, ProfileResponse, ProfilesRequest, ProfilesResponse
from service.state import service_state

# The hot routes take the state from the request rather than through `Depends`: FastAPI solves
# a dependency on every request, and a cache hit is short enough for that to show.
router = APIRouter(tags=["profiles"])
ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorResponse, "description": "Body too large."},
    422: {"model": ErrorResponse, "description": "Invalid input (unknown field, bad type, k out of range)."},
    503: {"model": ErrorResponse, "description": "Overloaded (Retry-After) or cache unavailable."},
}


@router.post("/profile", response_model=ProfileResponse, responses=ERRORS)
async def post_profile(body: ProfileRequest, request: Request) -> RenderedJSON:
    """Compute a user's top-K interest tags from their features, cache it, and return it."""
    (profile,) = await compute_profiles(service_state(request), [body])
    return RenderedJSON(profile)


@router.post("/profiles", response_model=ProfilesResponse, responses=ERRORS)
async def post_profiles(body: ProfilesRequest, request: Request) -> RenderedJSON:
    """Profiles for several users in one call (at most `max_batch_users`)."""
    state = service_state(request)
    limit = state.settings.max_batch_users
    if len(body.users) > limit:
        raise InvalidInput(f"at most {limit} users per call, got {len(body.users)}")
    return RenderedJSON(b'{"profiles":[' + b",".join(await compute_profiles(state, body.users)) + b"]}")


@router.get(
    "/profile/{user_id}",
    response_model=ProfileResponse,
    responses={404: {"model": ErrorResponse, "description": "Not cached, or expired."}, **ERRORS},
)
async def get_profile(
    request: Request,
    user_id: Annotated[str, Path(min_length=1, max_length=256)],
    k: Annotated[int | None, Query(ge=1, description="Number of tags (at most what was cached).")] = None,
) -> RenderedJSON:
    """The cached profile of a user, as last computed by the bundle now being served."""
    return RenderedJSON(await read_profile(service_state(request), user_id, k))
