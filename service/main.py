"""The FastAPI app: `create_app(settings)` and its lifespan (load the bundle, open the cache)."""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from index.errors import TagIndexError
from model_export.errors import BundleError
from service.ab import Experiment
from service.arms import align_fields
from service.auth import Auth
from service.cache import make_cache
from service.config import Settings, misspelt_settings, settings_error, unread_settings
from service.engine import DeviceUnavailable, ProfileEngine
from service.errors import PROBLEM_MEDIA_TYPE, install_error_handlers
from service.feedback import Feedback
from service.fleet import Fleet
from service.logs import configure_logging
from service.metrics import Metrics
from service.middleware import Gateway
from service.redis_client import eviction_warning, redact_url
from service.responses import JSONResponse
from service.routes import admin, experiment, feedback, health, lookup, profile
from service.routes.explorer import install_explorer
from service.routes.hot import HotRoutes
from service.routes.keyed import SECURITY_SCHEMES
from service.schemas import Problem
from service.stale import StaleFallback, redis_client_of
from service.state import ServiceState
from service.tracing import make_tracing

log = logging.getLogger("utpm.service")

# Start-up failures the service explains in one line: bundle, index and device problems.
STARTUP_ERRORS = (BundleError, TagIndexError, DeviceUnavailable)

# The global OpenTelemetry providers that stand for "none configured yet" (FastAPI's own test).
_UNSET_PROVIDERS = {"ProxyTracerProvider", "_ProxyMeterProvider", "ProxyLoggerProvider"}

# Young-generation GC every 10,000 allocations instead of Python's 700: under load each young
# collection walks the in-flight requests' objects, and at 700 that ran every few cache hits
# (docs/performance.md, "GC").
GC_YOUNG_THRESHOLD = 10_000


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. Without `settings`, they are read from UTPM_* environment variables."""
    if settings is None:
        try:
            settings = Settings()
        except ValidationError as e:  # `uvicorn --factory` (the images): one line, not a traceback
            raise SystemExit(f"error: {settings_error(e)}") from None
    configure_logging(settings.log_level)
    for warning in [*misspelt_settings(os.environ), *unread_settings(settings)]:
        log.warning(warning)
    metrics = Metrics()
    auth = Auth(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
        engine = await asyncio.to_thread(ProfileEngine.load, settings.bundle, settings)
        engine.start(on_batch=metrics.batch_size.observe)
        url = settings.redis_url.get_secret_value() if settings.redis_url else None
        cache = make_cache(
            url,
            settings.redis_timeout_ms,
            near_ttl_ms=settings.near_cache_ttl_ms,
            on_read_batch=metrics.cache_read_batch.observe,
            on_near_hit=metrics.near_cache_hits.inc,
            on_breaker_state=metrics.on_breaker_state,
        )
        tracing = make_tracing(settings.otlp_endpoint)
        app.state.service = ServiceState(
            settings=settings,
            engine=engine,
            cache=cache,
            metrics=metrics,
            auth=auth,
            tracing=tracing,
            fallback=StaleFallback(cache),
        )
        await app.state.service.fallback.refresh(engine.version)  # registers the served version
        app.state.service.feedback = Feedback(cache, metrics.registry)
        if settings.ab_challenger_bundle is not None:
            challenger = await asyncio.to_thread(ProfileEngine.load, settings.ab_challenger_bundle, settings)
            if challenger.version == engine.version:
                raise BundleError(f"UTPM_AB_CHALLENGER_BUNDLE is the champion's version {engine.version}")
            challenger.start(on_batch=metrics.batch_size.observe)
            app.state.service.experiment = Experiment(challenger, settings.ab_challenger_share)
            align_fields(app.state.service)
            await app.state.service.fallback.register_challenger(challenger.version)
            log.info("A/B: challenger %s at share %.3f", challenger.version, settings.ab_challenger_share)
        client = redis_client_of(cache)
        if client is not None and (warning := await eviction_warning(client)) is not None:
            log.warning("%s", warning)
        if settings.fleet_sync and client is not None:
            fleet = app.state.service.fleet = Fleet(app.state.service)
            await fleet.follow_once(starting=True)  # before serving: the arms the fleet serves now
            fleet.start()
            engine = app.state.service.engine  # the fleet's champion, when it named another
        app.state.service.feedback.show_arms(app.state.service.experiment.describe(engine))
        metrics.watch_gc()
        metrics.bundle_info.labels(engine.version, engine.model_name).set(1)
        log.info(
            "serving bundle %s (%s, %d tags, scored by the %s): model on %s, %s (UTPM_DEVICE=%s); "
            "cache %s; auth reads %s, writes %s, admin %s; tracing %s",
            engine.version,
            engine.model_name,
            engine.n_tags,
            "linear start (no model run)" if engine.scorer == "linear" else "model",
            engine.execution_provider,
            engine.index_where,
            settings.device,
            redact_url(url) if url else "memory",
            *(auth.describe()[k] for k in ("reads", "writes", "admin")),
            "on" if tracing is not None else "off",
        )
        if auth.writes_open:
            log.warning("writes are open: any caller can overwrite any user's profile; configure UTPM_AUTH_KEYS")
        try:
            yield
        finally:
            state: ServiceState = app.state.service
            if state.fleet is not None:
                await state.fleet.stop()
            await asyncio.gather(*state.retiring, return_exceptions=True)
            await state.engine.retire()
            if state.experiment.challenger is not None:
                await state.experiment.challenger.retire()
            await cache.close()
            metrics.unwatch_gc()
            if tracing is not None:
                tracing.shutdown()

    app = FastAPI(
        **_fastapi_telemetry(),
        title="utpm profile service",
        version="1",
        default_response_class=JSONResponse,
        lifespan=lifespan,
        description="User-tag profiles (UTPM) for recall layers. Every error is RFC 9457 problem details "
        "(application/problem+json).",
    )
    app.state.metrics = metrics
    install_error_handlers(app)
    app.include_router(profile.router)
    # First of all routes: they answer every GET /profile/{user_id} and POST /profile (the APIRoutes
    # only document them).
    app.router.routes[:0] = [profile.GetProfileRoute(), profile.PostProfileRoute()]
    app.include_router(lookup.router)
    app.include_router(health.router)
    app.include_router(admin.router)
    app.include_router(experiment.router)
    app.include_router(feedback.router)
    install_explorer(app)
    # innermost of the app's middleware (inside CORS): the two hot routes without the router's layers
    app.add_middleware(HotRoutes, router=app.router, handlers=app.exception_handlers)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["content-type", "x-request-id", "x-api-key", "authorization"],
        )
    # outermost: shed before anything else spends time on a request the loop cannot afford
    app.add_middleware(Gateway, metrics=metrics, max_inflight=settings.max_inflight_requests)
    app.openapi = lambda: problem_openapi(app)  # type: ignore[method-assign]
    app.router.lifespan = _quiet_startup_failure(app.router.lifespan)  # type: ignore[method-assign,assignment]
    return app


def _quiet_startup_failure(router_lifespan: ASGIApp) -> ASGIApp:
    """The router's lifespan, where a bundle that cannot be served (STARTUP_ERRORS: their messages name
    the file and the problem) stops the start-up with one `not starting: ...` log line instead of the
    traceback Starlette hands the server. The error is still raised, for the server to exit on."""

    async def lifespan(scope: Scope, receive: Receive, send: Send) -> None:
        held: list[Message] = []

        async def hold_failure(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed":
                held.append(message)  # sent once the error is known: with its traceback or without
            else:
                await send(message)

        try:
            await router_lifespan(scope, receive, hold_failure)
        except STARTUP_ERRORS as e:
            if held:
                log.error("not starting: %s", e)
                await send({**held.pop(), "message": ""})  # servers log a non-empty message as it is
            raise
        finally:
            for message in held:
                await send(message)

    return lifespan


def problem_openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI schema with every 4xx/5xx response documented as application/problem+json."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Problem"] = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    schema["components"]["securitySchemes"] = SECURITY_SCHEMES
    problem = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            responses = operation.get("responses", {})
            for code, response in responses.items():
                if code[:1] in ("4", "5"):
                    response["content"] = problem
            if "422" in responses:
                responses["422"]["description"] = responses["422"].get("description") or "Invalid input."
    app.openapi_schema = schema
    return schema


def _fastapi_telemetry() -> dict[str, Any]:
    """FastAPI's native OpenTelemetry (0.165 on) asks on every request whether a global provider is
    set; ask once here instead. Kept on when one is set now (e.g. by `opentelemetry-instrument`) or
    FASTAPI_OTEL_AUTO_CONFIGURE asks FastAPI to set them; off otherwise (the service's own spans
    are `service.tracing`'s and need none of it)."""
    if "telemetry" not in inspect.signature(FastAPI).parameters:
        return {}
    if os.getenv("FASTAPI_OTEL_AUTO_CONFIGURE", "").lower() == "true":
        return {}
    try:
        from opentelemetry import _logs, metrics, trace
    except ImportError:  # FastAPI's telemetry cannot run without it either
        return {}
    providers = (trace.get_tracer_provider(), metrics.get_meter_provider(), _logs.get_logger_provider())
    if any(type(p).__name__ not in _UNSET_PROVIDERS for p in providers):
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
