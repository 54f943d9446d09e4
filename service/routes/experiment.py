"""A/B routes: GET /experiment, and the admin API that loads, re-shares, promotes and drops the challenger.

The changes themselves are `service.arms`' (no request fails during one). With fleet sync
(`service.fleet`) every replica sharing the Redis follows an admin call; the UTPM_AB_* settings say
what a replica starts with.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import Field

from service import arms
from service.responses import JSONResponse
from service.routes.admin import publish
from service.routes.keyed import KeyedRoute, needs
from service.schemas import RequestBody
from service.state import ServiceState, State

router = APIRouter(tags=["experiment"], route_class=KeyedRoute)

ADMIN_ERRORS: dict[int | str, dict[str, str]] = {
    401: {"description": "Admin key missing or unknown."},
    403: {"description": "The API key is not an admin key."},
    404: {"description": "Admin endpoints are off (no admin key configured)."},
    409: {"description": "No challenger is loaded."},
    422: {"description": "Bundle refused (outside the bundle root, failed its checks, or the champion's version)."},
}


class ChallengerRequest(RequestBody):
    bundle: str = Field(min_length=1, description="Bundle directory, under the configured bundle root.")
    share: float | None = Field(
        None, ge=0.0, le=1.0, strict=True, description="Share of users it serves (default UTPM_AB_CHALLENGER_SHARE)."
    )


class ShareRequest(RequestBody):
    share: float = Field(ge=0.0, le=1.0, strict=True, description="Share of users the challenger serves.")


@router.get("/experiment")
@needs("read")
async def get_experiment(state: State) -> JSONResponse:
    """The arms being served (versions, models, feature fields) and the challenger's share."""
    return JSONResponse(state.experiment.describe(state.engine))


@router.post("/admin/challenger", responses=ADMIN_ERRORS)
@needs("admin")
async def load_challenger(body: ChallengerRequest, state: State) -> JSONResponse:
    """Load and check a bundle, then serve it to `share` of the users (replacing any challenger)."""
    share = state.settings.ab_challenger_share if body.share is None else body.share
    async with arms.lock:
        await arms.load_challenger(state, body.bundle, share)
        return await changed(state)


@router.post("/admin/challenger/share", responses=ADMIN_ERRORS)
@needs("admin")
async def set_share(body: ShareRequest, state: State) -> JSONResponse:
    """Change the challenger's share (users move between arms by their hash, as the share moves)."""
    async with arms.lock:
        arms.set_share(state, body.share)
        return await changed(state)


@router.post("/admin/challenger/promote", responses=ADMIN_ERRORS)
@needs("admin")
async def promote(state: State) -> JSONResponse:
    """The challenger becomes the champion for every user; the old champion is closed after its last request."""
    async with arms.lock:
        await arms.promote(state)
        return await changed(state)


@router.delete("/admin/challenger", responses=ADMIN_ERRORS)
@needs("admin")
async def drop(state: State) -> JSONResponse:
    """Stop the experiment: every user goes back to the champion; the challenger is closed after its last request."""
    async with arms.lock:
        arms.drop(state)
        return await changed(state)


async def changed(state: ServiceState) -> JSONResponse:
    """The arms after an admin change, published to the fleet (with its sequence number) when synced."""
    if state.feedback is not None:
        state.feedback.show_arms(state.experiment.describe(state.engine))
    return JSONResponse({**state.experiment.describe(state.engine), **await publish(state)})
