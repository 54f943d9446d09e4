"""GET /healthz, GET /readyz, GET /metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.responses import JSONResponse
from service.state import State

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> JSONResponse:
    """The process is alive and its event loop answers."""
    return JSONResponse({"status": "alive"})


@router.get("/readyz")
async def readyz(state: State) -> JSONResponse:
    """Bundle loaded and index ready; the cache's reachability is reported (a down cache = degraded)."""
    engine = state.engine
    try:
        cache_ok = await asyncio.wait_for(state.cache.ping(), timeout=max(0.05, state.settings.redis_timeout_ms / 500))
    except TimeoutError:
        cache_ok = False
    ready = engine.batcher is not None and engine.index.ntotal > 0
    body = {
        "status": ("ready" if cache_ok else "degraded") if ready else "not_ready",
        "model_version": engine.version,
        "model": engine.model_name,
        "tags": engine.index.ntotal,
        "index": engine.index.infos.factory if engine.index.infos is not None else "flat",
        "cache": {"kind": state.cache.kind, "reachable": cache_ok},
    }
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics(state: State) -> Response:
    """Prometheus text format."""
    batcher = state.engine.batcher
    state.metrics.pending.set(batcher.pending if batcher is not None else 0)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
