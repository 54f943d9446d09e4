"""POST /admin/reload: swap the bundle atomically. Needs an admin key; off without one configured."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from fastapi import APIRouter, Request

from index.errors import TagIndexError
from model_export.errors import BundleError
from service.engine import ProfileEngine
from service.errors import ReloadRefused
from service.responses import JSONResponse
from service.schemas import ReloadRequest, ReloadResponse
from service.state import ServiceState, State

router = APIRouter(tags=["admin"])
log = logging.getLogger("utpm.service")
_reload_lock = asyncio.Lock()


def resolve_bundle(state: ServiceState, requested: str) -> Path:
    """The requested bundle directory, which must lie under the configured root."""
    root = state.settings.reload_root
    path = Path(requested)
    path = (path if path.is_absolute() else root / path).resolve()
    if not path.is_relative_to(root):
        raise ReloadRefused(f"bundle {requested!r} is outside the bundle root; only bundles under it can be loaded")
    return path


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
async def reload_bundle(body: ReloadRequest, state: State, request: Request) -> JSONResponse:
    """Load and check a new bundle, then swap it in: requests in flight finish on the old one."""
    state.auth.check(request, "admin")
    path = resolve_bundle(state, body.bundle)
    async with _reload_lock:
        try:
            new = await asyncio.to_thread(ProfileEngine.load, path, state.settings)
        except (BundleError, TagIndexError, OSError, ValueError) as e:
            state.metrics.reloads.labels("refused").inc()
            message = str(e).replace(str(state.settings.reload_root), "<bundle-root>")
            log.warning("reload refused: %s", message)
            raise ReloadRefused(
                f"bundle {body.bundle!r} refused; the current bundle keeps serving: {message}"
            ) from None
        new.start(on_batch=state.metrics.batch_size.observe)
        old = state.engine
        if state.fallback is not None:
            state.fallback.swapping(new.version, old.version)
        state.engine = new  # the swap: new requests see the new engine from here on
        if state.fallback is not None:  # misses under the new version fall back to the old one's profiles
            await state.fallback.refresh(new.version, previous=old.version)
        task = asyncio.get_running_loop().create_task(old.retire())
        state.retiring.add(task)
        task.add_done_callback(state.retiring.discard)
    state.metrics.reloads.labels("ok").inc()
    state.metrics.bundle_info.clear()
    state.metrics.bundle_info.labels(new.version, new.model_name).set(1)
    log.info("reloaded bundle %s -> %s", old.version, new.version)
    return JSONResponse({"model_version": new.version, "previous_version": old.version})
