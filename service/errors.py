"""Domain errors, and RFC 9457 problem details for every 4xx/5xx the service answers.

Every error body is `application/problem+json`: `type` (a stable URN per kind of error, listed in
docs/serving.md "Errors"), `title`, `status`, `detail` (what went wrong, for a person) and
`request_id`; schema violations add `errors` (one entry per violation). No response ever carries a
stack trace or a file path: unexpected errors are logged with the request id and answered with a
generic 500 naming that id.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from service.batching import Overloaded
from service.cache import CacheUnavailable
from service.schema_errors import first_problems

log = logging.getLogger("utpm.service")

# Schema violations listed in one 422 (a field's or a value's union errors count as one).
MAX_LISTED_PROBLEMS = 100

PROBLEM_TYPE = "urn:utpm:problem:"
PROBLEM_MEDIA_TYPE = "application/problem+json"
# Retry-After on overload: the header's smallest unit; a queue past its bound drains in well under that.
RETRY_AFTER_S = 1

TITLES: dict[str, str] = {
    "bad_request": "Bad request",
    "validation": "Request does not match the schema",
    "invalid_input": "Invalid input",
    "unknown_field": "Unknown feature field",
    "not_cached": "No cached profile",
    "unauthorized": "API key missing or unknown",
    "forbidden": "API key not allowed here",
    "admin_disabled": "Admin endpoints are disabled",
    "reload_refused": "Bundle refused",
    "no_challenger": "No challenger loaded",
    "payload_too_large": "Request body too large",
    "unsupported_encoding": "Request body compressed",
    "overloaded": "Service overloaded",
    "cache_unavailable": "Profile cache unavailable",
    "feedback_unavailable": "Feedback store unavailable",
    "internal": "Internal error",
}


def problem_body(kind: str, status: int, detail: str, request_id: str, **extra: Any) -> bytes:
    title = TITLES.get(kind) or HTTPStatus(status).phrase
    return orjson.dumps(
        {
            "type": PROBLEM_TYPE + kind,
            "title": title,
            "status": status,
            "detail": detail,
            "request_id": request_id,
            **extra,
        }
    )


class ProblemResponse(Response):
    media_type = PROBLEM_MEDIA_TYPE


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


class FeedbackUnavailable(ServiceError):
    """Redis answered and refused the feedback store's command (scripts not allowed, out of memory)."""

    status, kind = 503, "feedback_unavailable"


class Unauthorized(ServiceError):
    status, kind = 401, "unauthorized"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, {"WWW-Authenticate": 'Bearer realm="utpm", charset="UTF-8"'})


class Forbidden(ServiceError):
    status, kind = 403, "forbidden"


class AdminDisabled(ServiceError):
    status, kind = 404, "admin_disabled"


class ReloadRefused(ServiceError):
    status, kind = 422, "reload_refused"


def _respond(
    request: Request, kind: str, status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> ProblemResponse:
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.errors.labels(kind if kind in TITLES else f"http_{status}").inc()
    rid = getattr(request.state, "request_id", "-")
    return ProblemResponse(problem_body(kind, status, detail, rid, **extra), status_code=status, headers=headers)


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:] or parts
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> ProblemResponse:
        return _respond(request, exc.kind, exc.status, exc.detail, exc.headers)

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, exc: Overloaded) -> ProblemResponse:
        return _respond(
            request,
            "overloaded",
            503,
            f"the service is overloaded ({exc}); retry later",
            {"Retry-After": str(RETRY_AFTER_S)},
        )

    @app.exception_handler(CacheUnavailable)
    async def _cache_down(request: Request, exc: CacheUnavailable) -> ProblemResponse:
        return _respond(
            request,
            "cache_unavailable",
            503,
            f"the profile cache is unavailable ({exc}); retry later or POST /profile",
            {"Retry-After": str(max(RETRY_AFTER_S, exc.retry_after_s))},
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> ProblemResponse:
        listed, more = first_problems(exc.errors(), MAX_LISTED_PROBLEMS)
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in listed]
        detail = "; ".join(f"{_location(e['loc'])}: {e['msg']}" for e in errors) or "invalid request"
        if more:
            detail += f"; more problems not listed (the first {MAX_LISTED_PROBLEMS} are)"
        return _respond(request, "validation", 422, detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> ProblemResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, f"http_{exc.status_code}")
        return _respond(request, kind, exc.status_code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> ProblemResponse:
        rid = getattr(request.state, "request_id", "-")
        log.exception("unexpected error", extra={"request_id": rid})
        # answered by the outermost layer, outside the Gateway that adds this header to every other answer
        return _respond(request, "internal", 500, f"internal error (request id {rid})", {"X-Request-ID": rid})
