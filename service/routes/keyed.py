"""Routes that check the caller's key before FastAPI reads the body.

FastAPI reads, parses and validates a request's body before its endpoint runs (and parses it before
it solves a dependency), so a key checked there still lets a caller without one make the service
read and parse up to a megabyte. `KeyedRoute` checks the role its endpoint declares with
`@needs(...)` before any of that; a need that depends on the body (a write when a profile is
stored) the endpoint checks itself. The plain routes (`PostProfileRoute`, `GetProfileRoute`) do the
same in their own handlers.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from service.auth import Need
from service.state import service_state

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])
NEEDS = "__utpm_needs__"


def needs(need: Need) -> Callable[[Endpoint], Endpoint]:
    """Mark an endpoint with the role its caller's key must allow, checked by `KeyedRoute` first."""

    def mark(endpoint: Endpoint) -> Endpoint:
        setattr(endpoint, NEEDS, need)
        return endpoint

    return mark


def needs_of(endpoint: Callable[..., Any]) -> Need | None:
    need: Need | None = getattr(endpoint, NEEDS, None)
    return need


# The OpenAPI schemes a key may come in (service.auth); `{}`: none, where no key of the role is configured
SECURITY_SCHEMES = {
    "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "Bearer": {"type": "http", "scheme": "bearer"},
}
SECURITY: list[dict[str, list[str]]] = [{"ApiKey": []}, {"Bearer": []}, {}]


class KeyedRoute(APIRoute):
    """An APIRoute whose endpoint's `needs` is checked before the request's body is received, and
    documented in its OpenAPI operation (`security`, and the role as `x-utpm-role`)."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        self.need = needs_of(endpoint)  # before APIRoute's __init__, which builds the handler
        if self.need is not None:
            extra = {"security": SECURITY, "x-utpm-role": self.need}
            kwargs["openapi_extra"] = {**(kwargs.get("openapi_extra") or {}), **extra}
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        need = self.need
        if need is None:  # open to every caller
            return handler

        async def checked(request: Request) -> Response:
            service_state(request).auth.check(request, need)
            return await handler(request)

        return checked
