"""POST /admin/reload: swap the bundle atomically. Needs an admin key; off without one configured."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service import arms
from service.responses import JSONResponse
from service.routes.keyed import KeyedRoute, needs
from service.schemas import ReloadRequest, ReloadResponse
from service.state import ServiceState, State

router = APIRouter(tags=["admin"], route_class=KeyedRoute)


@router.post(
    "/admin/reload",
    response_model=ReloadResponse,
    responses={
        401: {"description": "Admin key missing or unknown."},
        403: {"description": "The API key is not an admin key."},
        404: {"description": "Admin endpoints are off (no admin key configured)."},
        422: {"description": "Bundle refused (outside the bundle root, or failed its checks)."},
    },
)
@needs("admin")
async def reload_bundle(body: ReloadRequest, state: State) -> JSONResponse:
    """Load and check a new bundle, then swap it in: requests in flight finish on the old one. With
    fleet sync (UTPM_FLEET_SYNC, Redis) every replica sharing the Redis follows."""
    async with arms.lock:
        old, new = await arms.reload(state, body.bundle)
        fleet = await publish(state)
    return JSONResponse({"model_version": new.version, "previous_version": old, **fleet})


async def publish(state: ServiceState) -> dict[str, Any]:
    """After an admin change: the fleet's new state ({"fleet": {"seq"}}), or {} without fleet sync."""
    if state.fleet is None:
        return {}
    return {"fleet": {"seq": await state.fleet.publish()}}
