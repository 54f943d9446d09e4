"""A/B routes: GET /experiment, and the admin API that loads, re-shares, promotes and drops the challenger.

Every change is a reference swap on the event loop: requests already running finish on the engine
they started with (an engine is closed only after its last lease, as on /admin/reload), so no
request fails. Admin calls change the replica that receives them, as /admin/reload does; the
UTPM_AB_* settings say what a replica starts with.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from index.errors import TagIndexError
from model_export.errors import BundleError
from service.ab import Experiment
from service.engine import ProfileEngine
from service.errors import InvalidInput, ReloadRefused
from service.responses import JSONResponse
from service.routes.admin import _reload_lock as swap_lock  # one lock for every engine swap
from service.routes.admin import resolve_bundle
from service.state import ServiceState, State

router = APIRouter(tags=["experiment"])
log = logging.getLogger("utpm.service")

ADMIN_ERRORS: dict[int | str, dict[str, str]] = {
    401: {"description": "Admin key missing or unknown."},
    403: {"description": "The API key is not an admin key."},
    404: {"description": "Admin endpoints are off (no admin key configured)."},
    409: {"description": "No challenger is loaded."},
    422: {"description": "Bundle refused (outside the bundle root, failed its checks, or the champion's version)."},
}


class ChallengerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bundle: str = Field(min_length=1, description="Bundle directory, under the configured bundle root.")
    share: float | None = Field(
        None, ge=0.0, le=1.0, strict=True, description="Share of users it serves (default UTPM_AB_CHALLENGER_SHARE)."
    )


class ShareRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    share: float = Field(ge=0.0, le=1.0, strict=True, description="Share of users the challenger serves.")


class NoChallenger(InvalidInput):
    status, kind = 409, "no_challenger"


async def open_challenger(state: ServiceState, path: Path, shown: str) -> ProfileEngine:
    try:
        engine = await asyncio.to_thread(ProfileEngine.load, path, state.settings)
    except (BundleError, TagIndexError, OSError, ValueError) as e:
        message = str(e).replace(str(state.settings.reload_root), "<bundle-root>")
        raise ReloadRefused(f"challenger {shown!r} refused; serving goes on unchanged: {message}") from None
    if engine.version == state.engine.version:
        raise ReloadRefused(
            f"challenger {shown!r} is the champion's version {engine.version}; an A/B needs two versions"
        )
    engine.start(on_batch=state.metrics.batch_size.observe)
    return engine


def retire(state: ServiceState, engine: ProfileEngine) -> None:
    task = asyncio.get_running_loop().create_task(engine.retire())
    state.retiring.add(task)
    task.add_done_callback(state.retiring.discard)


def show(state: ServiceState) -> JSONResponse:
    if state.feedback is not None:
        state.feedback.show_arms(state.experiment.describe(state.engine))
    return JSONResponse(state.experiment.describe(state.engine))


@router.get("/experiment")
async def get_experiment(state: State, request: Request) -> JSONResponse:
    """The arms being served (versions, models, feature fields) and the challenger's share."""
    if not state.auth.reads_open:
        state.auth.check(request, "read")
    return JSONResponse(state.experiment.describe(state.engine))


@router.post("/admin/challenger", responses=ADMIN_ERRORS)
async def load_challenger(body: ChallengerRequest, state: State, request: Request) -> JSONResponse:
    """Load and check a bundle, then serve it to `share` of the users (replacing any challenger)."""
    state.auth.check(request, "admin")
    path = resolve_bundle(state, body.bundle)
    share = state.settings.ab_challenger_share if body.share is None else body.share
    async with swap_lock:
        engine = await open_challenger(state, path, body.bundle)
        old = state.experiment.challenger
        state.experiment = Experiment(engine, share)  # the swap
        if old is not None:
            retire(state, old)
    if state.fallback is not None:
        await state.fallback.register_challenger(engine.version)
    log.info("challenger %s loaded at share %.3f", engine.version, share)
    return show(state)


@router.post("/admin/challenger/share", responses=ADMIN_ERRORS)
async def set_share(body: ShareRequest, state: State, request: Request) -> JSONResponse:
    """Change the challenger's share (users move between arms by their hash, as the share moves)."""
    state.auth.check(request, "admin")
    challenger = state.experiment.challenger
    if challenger is None:
        raise NoChallenger("no challenger is loaded; POST /admin/challenger loads one")
    state.experiment = Experiment(challenger, body.share)
    return show(state)


@router.post("/admin/challenger/promote", responses=ADMIN_ERRORS)
async def promote(state: State, request: Request) -> JSONResponse:
    """The challenger becomes the champion for every user; the old champion is closed after its last request."""
    state.auth.check(request, "admin")
    async with swap_lock:
        challenger = state.experiment.challenger
        if challenger is None:
            raise NoChallenger("no challenger is loaded; nothing to promote")
        old = state.engine
        if state.fallback is not None:
            state.fallback.swapping(challenger.version, old.version)
        state.engine, state.experiment = challenger, Experiment()  # the swap, in one step
        if state.fallback is not None:  # misses under the new champion fall back to the old one's profiles
            await state.fallback.refresh(challenger.version, previous=old.version)
        retire(state, old)
    state.metrics.bundle_info.clear()
    state.metrics.bundle_info.labels(challenger.version, challenger.model_name).set(1)
    log.info("challenger %s promoted; champion %s retired", challenger.version, old.version)
    return show(state)


@router.delete("/admin/challenger", responses=ADMIN_ERRORS)
async def drop(state: State, request: Request) -> JSONResponse:
    """Stop the experiment: every user goes back to the champion; the challenger is closed after its last request."""
    state.auth.check(request, "admin")
    async with swap_lock:
        challenger = state.experiment.challenger
        if challenger is None:
            raise NoChallenger("no challenger is loaded; nothing to drop")
        state.experiment = Experiment()
        retire(state, challenger)
    log.info("challenger %s dropped", challenger.version)
    return show(state)
