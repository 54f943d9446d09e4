"""GET /healthz, GET /readyz, GET /metrics."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.cache import breaker_of
from service.engine import ProfileEngine
from service.responses import JSONResponse
from service.state import State

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> JSONResponse:
    """The process is alive and its event loop answers."""
    return JSONResponse({"status": "alive"})


@router.get("/readyz", responses={503: {"description": "No bundle loaded or the index is empty."}})
async def readyz(state: State) -> JSONResponse:
    """Bundle loaded and index ready (a bundle served by its linear scorer loads none); where the model
    and the index run; the cache's reachability (a down cache = degraded) and its circuit breaker; the
    auth policy in force."""
    engine = state.engine
    try:
        cache_ok = await asyncio.wait_for(state.cache.ping(), timeout=max(0.05, state.settings.redis_timeout_ms / 500))
    except TimeoutError:
        cache_ok = False
    ready = engine.batcher is not None and engine.n_tags > 0
    cache: dict[str, Any] = {"kind": state.cache.kind, "reachable": cache_ok}
    breaker = breaker_of(state.cache)
    if breaker is not None:
        cache["breaker"] = breaker.state
    body = {
        "status": ("ready" if cache_ok else "degraded") if ready else "not_ready",
        "model_version": engine.version,
        "model": engine.model_name,
        "scorer": engine.scorer,
        "tags": engine.n_tags,
        "index": _index_kind(engine),
        "device": {
            "requested": state.settings.device,
            "execution_provider": engine.execution_provider,
            "index": engine.index_device,
        },
        "cache": cache,
        "auth": state.auth.describe(),
        "fleet": state.fleet.describe() if state.fleet is not None else {"sync": False},
    }
    return JSONResponse(body, status_code=200 if ready else 503)


def _index_kind(engine: ProfileEngine) -> str:
    """The index's factory string; "none" when the linear scorer loaded none."""
    if engine.index is None:
        return "none"
    return engine.index.infos.factory if engine.index.infos is not None else "flat"


@router.get("/metrics", include_in_schema=False)
async def metrics(state: State) -> Response:
    """Prometheus text format."""
    if state.feedback is not None:  # today's QC/DCTR per arm, read from the shared aggregates
        await state.feedback.refresh_metrics(state.experiment.arm_versions(state.engine))
    batcher = state.engine.batcher
    state.metrics.pending.set(batcher.pending if batcher is not None else 0)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
