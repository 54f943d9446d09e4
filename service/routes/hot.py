"""`HotRoutes`: POST /profile and GET /profile/{user_id} answered without the router's layers.

Between the app's own middleware and a route, Starlette and FastAPI put an exception layer, an
exit-stack layer and the router, which tries each route in turn: each is another coroutine on every
request. For the two routes the recall layers call all the time, this innermost middleware hands
the request to the route itself and maps what it raises through the app's exception handlers as
the exception layer would (unexpected errors go on to the outer 500 handler, as before). Every
other request, and HEAD or any other method on these paths, takes the usual way.

It serves the plain routes the router holds (`GetProfileRoute`, `PostProfileRoute`), looked up again
whenever the router's route list is replaced: an app whose routes leave one out (the loop
benchmark's "before" arms) answers that path through the router. Paths are compared as they
arrive (`scope["path"]`); where a root path makes them differ, requests take the usual way (slower,
not wrong), and the route's own match decides the rest.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.routing import BaseRoute, Match, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.routes.profile import GetProfileRoute, PostProfileRoute

Handler = Callable[[Request, Exception], Any]


class HotRoutes:
    def __init__(self, app: ASGIApp, router: Router, handlers: Mapping[Any, Handler]) -> None:
        self.app = app
        self.router = router
        self.handlers = handlers  # the app's exception handlers (by class or status code)
        self._routes: list[BaseRoute] | None = None
        self._get: GetProfileRoute | None = None
        self._post: PostProfileRoute | None = None

    def _route(self, scope: Scope) -> GetProfileRoute | PostProfileRoute | None:
        if self.router.routes is not self._routes:  # a new route list: look the plain routes up again
            self._routes = routes = self.router.routes
            self._get = next((r for r in routes if isinstance(r, GetProfileRoute)), None)
            self._post = next((r for r in routes if isinstance(r, PostProfileRoute)), None)
        method = scope["method"]
        if method == "POST" and scope["path"] == "/profile":
            return self._post
        if method == "GET" and scope["path"].startswith("/profile/"):
            return self._get
        return None

    def _handler(self, exc: Exception) -> Handler | None:
        # as Starlette's ExceptionMiddleware: the nearest class's handler; Exception's is the outer layer's
        for cls in type(exc).__mro__:
            if cls is Exception:
                return None
            if cls in self.handlers:
                return self.handlers[cls]
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self._route(scope) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        match, child = route.matches(scope)
        if match is not Match.FULL:
            await self.app(scope, receive, send)
            return
        scope.update(child)
        scope.setdefault("router", self.router)
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await route.handle(scope, receive, sending)
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None or started:
                raise
            request = Request(scope, receive)
            if inspect.iscoroutinefunction(handler):
                response = await handler(request, exc)
            else:
                response = await run_in_threadpool(handler, request, exc)
            await response(scope, receive, send)
