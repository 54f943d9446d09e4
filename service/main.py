"""The FastAPI app: `create_app(settings)` and its lifespan (load the bundle, open the cache)."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service.cache import make_cache, redact_url
from service.config import Settings
from service.engine import ProfileEngine
from service.errors import install_error_handlers
from service.logs import configure_logging
from service.metrics import Metrics
from service.middleware import Gateway
from service.responses import JSONResponse
from service.routes import admin, health, profile
from service.state import ServiceState

log = logging.getLogger("utpm.service")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. Without `settings`, they are read from UTPM_* environment variables."""
    settings = settings or Settings()  # type: ignore[call-arg]
    configure_logging(settings.log_level)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.gc_young_threshold:
            # Each young collection walks every live young object, and under load those are the
            # in-flight requests' whatever the threshold: at Python's 700 it ran every ~11 cache
            # hits, 4.7% of the wall time of a GET run of `utpm bench serve` (07:21 UTC run in
            # docs/performance.md); at 10,000 the later runs show none.
            gc.set_threshold(settings.gc_young_threshold, *gc.get_threshold()[1:])
        engine = await asyncio.to_thread(ProfileEngine.load, settings.bundle, settings)
        engine.start(on_batch=metrics.batch_size.observe)
        url = settings.redis_url.get_secret_value() if settings.redis_url else None
        cache = make_cache(
            url,
            settings.redis_timeout_ms,
            settings.memory_cache_max_entries,
            near_ttl_ms=settings.near_cache_ttl_ms,
            near_max_entries=settings.near_cache_max_entries,
            on_read_batch=metrics.cache_read_batch.observe,
            on_near_hit=metrics.near_cache_hits.inc,
        )
        app.state.service = ServiceState(settings=settings, engine=engine, cache=cache, metrics=metrics)
        metrics.watch_gc()
        metrics.bundle_info.labels(engine.version, engine.model_name).set(1)
        log.info(
            "serving bundle %s (%s, %d tags) with cache %s",
            engine.version,
            engine.model_name,
            engine.index.ntotal,
            redact_url(url) if url else "memory",
        )
        try:
            yield
        finally:
            state: ServiceState = app.state.service
            await asyncio.gather(*state.retiring, return_exceptions=True)
            await state.engine.retire()
            await cache.close()
            metrics.unwatch_gc()

    app = FastAPI(
        title="utpm profile service",
        version="1",
        default_response_class=JSONResponse,
        lifespan=lifespan,
        description="User-tag profiles (UTPM) for recall layers.",
    )
    app.state.metrics = metrics
    install_error_handlers(app, settings.retry_after_s)
    app.include_router(profile.router)
    app.include_router(health.router)
    app.include_router(admin.router)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["content-type", "x-request-id"],
        )
    # outermost: shed before anything else spends time on a request the loop cannot afford
    app.add_middleware(
        Gateway,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        max_inflight=settings.max_inflight,
        retry_after_s=settings.retry_after_s,
    )
    return app
