"""POST /feedback (impressions and clicks, batched) and GET /feedback/summary (QC/DCTR per arm, with CIs)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from service.errors import InvalidInput
from service.feedback import LATE_DAYS, taken_days
from service.profiles import DEFAULT_K, MAX_K
from service.responses import JSONResponse
from service.routes.keyed import KeyedRoute, needs
from service.routes.profile import ERRORS, refuse_repeated_query_params
from service.schemas import FeatureValue, RequestBody, UserId
from service.state import ServiceState, service_state
from utpm.features.values import clean_values

router = APIRouter(tags=["feedback"], route_class=KeyedRoute)

# One call carries a page of a recall layer's log, not a day of it: bounded like POST /profiles.
MAX_EVENTS_PER_CALL = 1000
MAX_ITEMS_PER_EVENT = 1000
MAX_TAGS_PER_ITEM = 200
MAX_SUMMARY_DAYS = 90


class Impression(RequestBody):
    tags: list[FeatureValue] = Field(
        min_length=1, max_length=MAX_TAGS_PER_ITEM, description="The browsed item's tags (stripped, blanks ignored)."
    )
    clicked: bool = Field(False, strict=True, description="Whether the user clicked the item.")


class FeedbackEvent(RequestBody):
    user_id: UserId
    items: list[Impression] = Field(min_length=1, max_length=MAX_ITEMS_PER_EVENT, description="Browsed items.")
    model_version: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="The model_version of the profile the user was served (default: the user's arm's now).",
    )
    k: int | None = Field(
        None, ge=1, le=MAX_K, strict=True, description="Tags of the served profile the recall layer used (default 50)."
    )
    day: dt.date | None = Field(
        None,
        description=f"The UTC day the impressions happened (default today); taken from {LATE_DAYS} days ago to "
        "tomorrow.",
    )


class FeedbackRequest(RequestBody):
    events: list[FeedbackEvent] = Field(min_length=1, max_length=MAX_EVENTS_PER_CALL)


class FeedbackResponse(BaseModel):
    received: int
    counted: int = Field(description="Events restricted to a served profile and added to the aggregates.")
    no_profile: int = Field(description="Events not counted: no cached profile of the user under that version.")
    no_profile_users: list[str] = Field(description="Their user ids (the first 100).")


def accepted_versions(state: ServiceState) -> list[str]:
    """The served versions, then the recently served ones and challengers (late feedback after a
    promote, a reload or a stopped experiment)."""
    fallback = state.fallback
    recent = [*fallback.versions, *fallback.challengers[:RECENT_CHALLENGERS]] if fallback is not None else []
    return list(dict.fromkeys([*state.experiment.versions(state.engine), *recent]))


# Challengers whose late feedback still counts: the one just stopped, and the one before it.
RECENT_CHALLENGERS = 2


@router.post("/feedback", response_model=FeedbackResponse, responses=ERRORS)
@needs("write")
async def post_feedback(body: FeedbackRequest, request: Request) -> JSONResponse:
    """Impressions and clicks of users' browsed items; aggregated into QC/DCTR per model version and day."""
    state = service_state(request)
    assert state.feedback is not None
    accepted = accepted_versions(state)
    today = dt.datetime.now(dt.UTC).date()
    first, last = taken_days(today)
    events = []
    for n, event in enumerate(body.events):
        version = event.model_version or state.experiment.pick(state.engine, event.user_id, None)[0].version
        if version not in accepted:
            raise InvalidInput(
                f"events.{n}.model_version: {version!r} is neither served nor recently served; accepted: {accepted}"
            )
        day = event.day or today
        if day > last:
            raise InvalidInput(f"events.{n}.day: {day} is in the future")
        if day < first:
            raise InvalidInput(
                f"events.{n}.day: {day} is more than {LATE_DAYS} days ago; feedback is taken for {first} to {last} "
                "(UTC): an older day's per-user sets, which keep a retry from counting twice, are gone"
            )
        items = [(clean_values(item.tags), item.clicked) for item in event.items]  # as the profile's tags were
        events.append((day.isoformat(), version, event.user_id, event.k or DEFAULT_K, items))
    return JSONResponse(await state.feedback.record(events))


@router.get("/feedback/summary", responses=ERRORS)
@needs("read")
async def feedback_summary(
    request: Request,
    days: Annotated[
        int, Query(ge=1, le=MAX_SUMMARY_DAYS, description="The last this-many UTC days, today included.")
    ] = 1,
    champion: Annotated[str | None, Query(max_length=128, description="Version to report as the champion.")] = None,
    challenger: Annotated[str | None, Query(max_length=128, description="Version to report as the challenger.")] = None,
) -> JSONResponse:
    """QC per user-day and DCTR per arm (and day), the counts behind them, and challenger - champion with a 95% CI."""
    refuse_repeated_query_params(request.query_params, ("days", "champion", "challenger"))
    state = service_state(request)
    assert state.feedback is not None
    arms = {"champion": champion or state.engine.version}
    current = state.experiment.challenger
    if challenger or current is not None:
        arms["challenger"] = challenger or current.version  # type: ignore[union-attr]
    if arms.get("challenger") == arms["champion"]:
        raise InvalidInput("champion and challenger must be different versions")
    today = dt.datetime.now(dt.UTC).date()
    day_list = [(today - dt.timedelta(days=d)).isoformat() for d in range(days - 1, -1, -1)]
    return JSONResponse(await state.feedback.summary(arms, day_list))
