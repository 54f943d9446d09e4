"""Domain errors and the handlers that turn every failure into a clear JSON 4xx/5xx.

No response ever carries a stack trace or a file path: unexpected errors are logged with the
request id and answered with a generic 500 naming that id.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.batching import Overloaded
from service.cache import CacheUnavailable
from service.responses import JSONResponse

log = logging.getLogger("utpm.service")


class ServiceError(Exception):
    """An error with an HTTP status and a message meant for the caller."""

    status = 400
    kind = "bad_request"

    def __init__(self, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers


class UnknownFields(ServiceError):
    status, kind = 422, "unknown_field"


class InvalidInput(ServiceError):
    status, kind = 422, "invalid_input"


class NotCached(ServiceError):
    status, kind = 404, "not_cached"


class Unauthorized(ServiceError):
    status, kind = 401, "unauthorized"


class AdminDisabled(ServiceError):
    status, kind = 404, "admin_disabled"


class ReloadRefused(ServiceError):
    status, kind = 422, "reload_refused"


class PayloadTooLarge(ServiceError):
    status, kind = 413, "payload_too_large"


def _count(request: Request, kind: str) -> None:
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.errors.labels(kind).inc()


def install_error_handlers(app: FastAPI, retry_after_s: int) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        _count(request, exc.kind)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        _count(request, "overloaded")
        return JSONResponse(
            {"detail": f"the service is overloaded ({exc}); retry later"},
            status_code=503,
            headers={"Retry-After": str(retry_after_s)},
        )

    @app.exception_handler(CacheUnavailable)
    async def _cache_down(request: Request, exc: CacheUnavailable) -> JSONResponse:
        _count(request, "cache_unavailable")
        return JSONResponse(
            {"detail": "the profile cache is unavailable; retry later or POST /profile"},
            status_code=503,
            headers={"Retry-After": str(retry_after_s)},
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        _count(request, "validation")
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()
        ]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        _count(request, f"http_{exc.status_code}")
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        _count(request, "internal")
        rid = getattr(request.state, "request_id", "-")
        log.exception("unexpected error", extra={"request_id": rid})
        return JSONResponse({"detail": f"internal error (request id {rid})"}, status_code=500)
