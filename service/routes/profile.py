"""POST /profile, GET and DELETE /profile/{user_id}, POST /profiles, POST /profiles/forget."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, StringConstraints, TypeAdapter, ValidationError
from starlette.datastructures import QueryParams
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send

from service.ab import label, pinned
from service.engine import ProfileEngine
from service.profiles import compute_profiles, delete_profiles, read_profile
from service.responses import JSONResponse, RenderedJSON
from service.routes.keyed import KeyedRoute, needs
from service.schemas import (
    USER_ID_MAX,
    DeleteResponse,
    ForgetRequest,
    ForgetResponse,
    ProfileRequest,
    ProfileResponse,
    ProfilesRequest,
    ProfilesResponse,
)
from service.state import service_state

# The hot routes take the state from the request rather than through `Depends`: FastAPI solves
# a dependency on every request, and a cache hit is short enough for that to show.
router = APIRouter(tags=["profiles"], route_class=KeyedRoute)

# UserId's stripping alone: the GET route checks the lengths itself, answering FastAPI's own 422s
_STRIPPED = TypeAdapter(Annotated[str, StringConstraints(strip_whitespace=True)])

# Error responses per route (bodies: application/problem+json, see service/errors.py); the
# OpenAPI schema gets the Problem schema for each from `service.main.problem_openapi`.
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "API key missing or unknown (only when keys are configured)."},
    403: {"description": "The API key's role does not allow this."},
}
ERRORS: dict[int | str, dict[str, Any]] = {
    **AUTH_ERRORS,
    413: {"description": "Body too large."},
    415: {"description": "Body compressed (a Content-Encoding other than identity)."},
    422: {"description": "Invalid input (unknown field, bad type, k out of range)."},
    500: {"description": "Internal error (the body names only the request id)."},
    503: {"description": "Overloaded (Retry-After) or cache unavailable (Retry-After)."},
}


async def _compute(request: Request, body: ProfileRequest) -> bytes:
    """POST /profile once its caller may compute (checked before the body was read); storing is a write."""
    state = service_state(request)
    if body.store:
        state.auth.check(request, "write")
    engine, arm = state.experiment.pick(state.engine, body.user_id, pinned(request.scope))
    (profile,) = await compute_profiles(state, [body], engine)
    return label(profile, arm)


# Documents POST /profile (OpenAPI); requests are answered by `PostProfileRoute` below, matched first.
@router.post("/profile", response_model=ProfileResponse, responses=ERRORS)
@needs("compute")
async def post_profile(body: ProfileRequest, request: Request) -> RenderedJSON:
    """Compute a user's top-K interest tags from their features, cache it (unless `store` is false), return it."""
    return RenderedJSON(await _compute(request, body))


@router.post("/profiles", response_model=ProfilesResponse, responses=ERRORS)
@needs("compute")
async def post_profiles(body: ProfilesRequest, request: Request) -> RenderedJSON:
    """Profiles for several users in one call (at most 256)."""
    refuse_body_fields_in_query(request.scope["query_string"], ProfilesRequest, "POST /profiles")
    state = service_state(request)
    if any(u.store for u in body.users):
        state.auth.check(request, "write")
    # Users of one call may fall in both A/B arms: one model run per arm, answered in the call's order.
    pin = pinned(request.scope)
    arms: dict[str, tuple[ProfileEngine, list[int]]] = {}
    for i, user in enumerate(body.users):
        engine, arm = state.experiment.pick(state.engine, user.user_id, pin)
        arms.setdefault(arm, (engine, []))[1].append(i)
    computed = await asyncio.gather(
        *(compute_profiles(state, [body.users[i] for i in rows], engine) for engine, rows in arms.values())
    )
    out = [b""] * len(body.users)
    for name, (_, rows), profiles in zip(arms, arms.values(), computed, strict=True):
        for i, profile in zip(rows, profiles, strict=True):
            out[i] = label(profile, name)
    return RenderedJSON(b'{"profiles":[' + b",".join(out) + b"]}")


async def _read(request: Request, user_id: str, k: int | None) -> bytes:
    state = service_state(request)
    if not state.auth.reads_open:
        state.auth.check(request, "read")
    pin = pinned(request.scope)
    engine, arm = state.experiment.pick(state.engine, user_id, pin)
    # The champion's own read keeps the stale fallback; a challenger's or pinned read never does.
    body = await read_profile(state, user_id, k, engine if arm == "challenger" or pin is not None else None)
    return label(body, arm)


# Documents GET /profile/{user_id} (OpenAPI); requests are answered by `GetProfileRoute` below, which
# is matched first. `:path`: a user id may hold `/` (`team/alice`, sent raw or as `team%2Falice`).
@router.get(
    "/profile/{user_id:path}",
    response_model=ProfileResponse,
    responses={404: {"description": "Not cached, or expired."}, **ERRORS},
)
@needs("read")
async def get_profile(
    request: Request,
    user_id: Annotated[str, Path(min_length=1, max_length=USER_ID_MAX)],
    k: Annotated[int | None, Query(ge=1, description="Number of tags (at most what was cached).")] = None,
) -> RenderedJSON:
    """The cached profile of a user, as last computed by the bundle now being served."""
    return RenderedJSON(await _read(request, user_id, k))


@router.delete("/profile/{user_id:path}", response_model=DeleteResponse, responses=ERRORS)
@needs("write")
async def delete_profile_route(
    request: Request, user_id: Annotated[str, Path(min_length=1, max_length=USER_ID_MAX)]
) -> JSONResponse:
    """Forget a user's profile: remove it from the cache under every model version that may hold one
    (the served versions and those in the version registry). Idempotent; a write, as storing is."""
    state = service_state(request)
    user_id = _path_user_id(user_id)
    gone = await delete_profiles(state, [user_id])
    return JSONResponse(
        {
            "user_id": user_id,
            "deleted": gone.profiles[user_id],
            "feedback_sets": gone.feedback_sets,
            "model_versions": gone.versions,
        }
    )


@router.post("/profiles/forget", response_model=ForgetResponse, responses=ERRORS)
@needs("write")
async def forget_profiles(body: ForgetRequest, request: Request) -> JSONResponse:
    """Forget several users at once (at most 256), as DELETE /profile/{user_id} does each, in one cache
    round trip: for a privacy job's batch of erasure requests. Idempotent; a write."""
    state = service_state(request)
    gone = await delete_profiles(state, body.user_ids)
    results = [{"user_id": u, "deleted": gone.profiles[u]} for u in body.user_ids]
    return JSONResponse(
        {
            "deleted": sum(gone.profiles.values()),
            "feedback_sets": gone.feedback_sets,
            "model_versions": gone.versions,
            "results": results,
        }
    )


def _invalid(loc: tuple[str, str], kind: str, msg: str, given: str, **ctx: int) -> RequestValidationError:
    """The 422 FastAPI's own validation of `loc` would raise."""
    error: dict[str, Any] = {"type": kind, "loc": loc, "msg": msg, "input": given}
    return RequestValidationError([{**error, "ctx": ctx} if ctx else error])


def _path_user_id(user_id: str) -> str:
    """A user id from the path, stripped and checked as POST's `UserId` is (the same 422s)."""
    if user_id[:1].isspace() or user_id[-1:].isspace():
        user_id = _STRIPPED.validate_python(user_id)
    if not user_id:
        msg = "String should have at least 1 character"
        raise _invalid(("path", "user_id"), "string_too_short", msg, "", min_length=1)
    if len(user_id) > USER_ID_MAX:
        msg = f"String should have at most {USER_ID_MAX} characters"
        raise _invalid(("path", "user_id"), "string_too_long", msg, user_id, max_length=USER_ID_MAX)
    return user_id


def _query_k(query: bytes) -> int | None:
    """`k` of a query string, checked as `Query(ge=1)` would; the plain `k=50` without parsing a query."""
    if not query:
        return None
    if query.startswith(b"k=") and query[2:].isdigit():
        raw = query[2:].decode()
    else:
        params = QueryParams(query.decode("latin-1"))
        refuse_repeated_query_params(params, ("k",))
        found = params.get("k")
        if found is None:
            return None
        raw = found
    try:
        k = int(raw)
    except ValueError:
        msg = "Input should be a valid integer, unable to parse string as an integer"
        raise _invalid(("query", "k"), "int_parsing", msg, raw) from None
    if k < 1:
        raise _invalid(("query", "k"), "greater_than_equal", "Input should be greater than or equal to 1", raw, ge=1)
    return k


class _HotRoute(Route):
    """A plain ASGI route that still tells the middleware which route it is (the latency label)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is not Match.NONE:
            child["route"] = self
        return match, child


class GetProfileRoute(_HotRoute):
    """GET /profile/{user_id} as a plain ASGI handler: no dependency solving, no parameter models, no
    Response object; a cache hit is short enough for those to be a visible share of it (docs/performance.md,
    "GET hits"). Same checks and the same 422s as the documented route; errors raise into the app's
    handlers as from any route."""

    def __init__(self) -> None:
        super().__init__("/profile/{user_id:path}", self._endpoint, methods=["GET"], include_in_schema=False)

    @staticmethod
    def _params(scope: Scope) -> tuple[str, int | None]:
        return _path_user_id(scope["path_params"]["user_id"]), _query_k(scope["query_string"])

    @classmethod
    async def _endpoint(cls, request: Request) -> RenderedJSON:
        """HEAD (through Starlette's Route, which sends no body)."""
        return RenderedJSON(await _read(request, *cls._params(request.scope)))

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "GET":  # HEAD through the endpoint, 405 for the rest: Starlette's own handling
            await super().handle(scope, receive, send)
            return
        body = await _read(Request(scope, receive), *self._params(scope))
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _json_body(scope: Scope) -> bool:
    """No Content-Type, application/json or application/*+json (FastAPI's rule for parsing a body)."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))
    return True


def refuse_repeated_query_params(params: QueryParams, names: Iterable[str]) -> None:
    """FastAPI takes the last of a repeated scalar parameter: `?k=2&k=300` is a caller's bug whose
    answer would depend on the order, so it is a 422 naming the values."""
    for name in names:
        values = params.getlist(name)
        if len(values) > 1:
            msg = f"given {len(values)} times ({', '.join(values)}); give it once"
            raise _invalid(("query", name), "repeated", msg, ", ".join(values))


def refuse_body_fields_in_query(query: bytes, body: type[BaseModel], route: str) -> None:
    """A POST reads its fields from the body only: `?k=5` (GET's way) would be ignored and the caller
    would get 50 tags, so a body field in the query string is a 422 that says where it goes."""
    if not query:
        return
    given = [name for name in QueryParams(query.decode("latin-1")) if name in body.model_fields]
    if given:
        msg = f"goes in the JSON body of {route}, not in the query string"
        raise RequestValidationError([{"type": "extra_forbidden", "loc": ("query", given[0]), "msg": msg}])


class PostProfileRoute(_HotRoute):
    """POST /profile as a plain ASGI handler: the body validated straight from its JSON bytes by pydantic
    (`model_validate_json`) instead of FastAPI's json.loads, dependency solving and Response object: per
    request, that is event-loop time a POST no longer spends (docs/performance.md, "POST"). Validation
    errors are FastAPI's 422s (loc prefixed with "body"); other errors raise into the app's handlers."""

    def __init__(self) -> None:
        super().__init__("/profile", self._unused, methods=["POST"], include_in_schema=False)

    @staticmethod
    async def _unused(request: Request) -> None:  # pragma: no cover - `handle` answers every POST
        raise AssertionError("unreachable")

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":  # 405: Starlette's own handling
            await super().handle(scope, receive, send)
            return
        request = Request(scope, receive)
        # a caller who may not compute is refused before its body is read; `store` may need more (_compute)
        service_state(request).auth.check(request, "compute")
        refuse_body_fields_in_query(scope["query_string"], ProfileRequest, "POST /profile")
        if not _json_body(scope):  # as FastAPI: a body that does not say it is JSON is not parsed
            msg = "Input should be a valid dictionary or object to extract fields from"
            raise RequestValidationError([{"type": "model_attributes_type", "loc": ("body",), "msg": msg}])
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        try:
            body = ProfileRequest.model_validate_json(b"".join(chunks))
        except ValidationError as e:
            errors = [{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]
            raise RequestValidationError(errors) from None
        answer = await _compute(request, body)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})
