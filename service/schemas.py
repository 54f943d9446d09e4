"""Request and response bodies of the API (the OpenAPI schema at /docs is generated from these).

Numbers and booleans in request bodies are strict (`strict=True`): "5" is no k and "yes" or 1 no
boolean, a 422 naming the field rather than a guess at what the client meant.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Annotated, Any, NotRequired, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    Strict,
    StringConstraints,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
    with_config,
)
from pydantic_core import PydanticKnownError
from typing_extensions import TypedDict

USER_ID_MAX = 256
# A bad body costs the event loop in proportion to what pydantic reads and reports, so what a client
# may send is bounded before it is read: the fields of a request, the users of a call, the ids of a
# lookup (the ceiling of its setting); and a list or object of values stops at its first bad one
# (`fail_fast`). A bundle has a handful of fields; a field unknown to it is a 422 anyway.
MAX_FIELDS = 64
# users per POST /profiles (and ids per forget): half the default model queue, so one call cannot fill it alone
MAX_USERS_PER_CALL = 256
UserId = Annotated[str, StringConstraints(min_length=1, max_length=USER_ID_MAX, strip_whitespace=True)]
FeatureValue = Annotated[str, StringConstraints(max_length=512)]
# strict: "3" or true is not a count (422); finiteness and sign are checked by parse_field (422).
# An integer stays an int, so one beyond float64 is clamped as a Python caller's is, not read as inf.
Count = Annotated[Annotated[int, Strict()] | Annotated[float, Strict()], Field(union_mode="left_to_right")]


# a TypedDict, so that pydantic hands `parse_field` a plain dict, as a Python caller's
@with_config(ConfigDict(extra="forbid"))
class CountAndItems(TypedDict):
    """A value's count and the number of distinct clicked items that carried it (0 < items <= count;
    without items, items = count)."""

    count: Count
    items: NotRequired[Count]


_COUNT_KEYS = frozenset(CountAndItems.__annotations__)
_is_dict = dict.__instancecheck__


def first_unknown_key_only(value: Any, known: Collection[str]) -> Any:
    """An object with more keys than `known` holds an unknown one: all but the first are dropped
    unread, so that however many a client sends, its 422 costs one error (the first unknown key)."""
    if isinstance(value, dict) and len(value) > len(known):
        first = next(k for k in value if k not in known)
        value = {k: v for k, v in value.items() if k in known or k == first}
    return value


class RequestBody(BaseModel):
    """A request body, or an object in one: a key it does not have is a 422 (`extra="forbid"`), of which
    only the first is read (`first_unknown_key_only`)."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="wrap")
    @classmethod
    def _first_unknown_key_only(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        return handler(first_unknown_key_only(data, cls.model_fields))


# Each JSON type matches one member, so the first that validates is the one smart mode picks; tried in
# order, a long list is validated once instead of against every member.
ValueCount = Annotated[Count | CountAndItems, Field(union_mode="left_to_right")]
FieldValues = Annotated[
    Annotated[list[FeatureValue], Field(fail_fast=True)]
    | FeatureValue
    | Annotated[dict[FeatureValue, ValueCount], Field(fail_fast=True)],
    Field(union_mode="left_to_right"),
]


def _bounded_features(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """Refuse more than MAX_FIELDS fields before validating any (`max_length` counts them after), and
    read a count object up to its first unknown key (checked in C-level maps: this runs per request)."""
    if isinstance(value, dict):
        if len(value) > MAX_FIELDS:
            raise PydanticKnownError(
                "too_long", {"field_type": "Dictionary", "max_length": MAX_FIELDS, "actual_length": len(value)}
            )
        for name, values in value.items():
            if type(values) is dict and max(map(len, filter(_is_dict, values.values())), default=0) > len(_COUNT_KEYS):
                value = {**value, name: {v: first_unknown_key_only(c, _COUNT_KEYS) for v, c in values.items()}}
    return handler(value)


Features = Annotated[Annotated[dict[str, FieldValues], Field(max_length=MAX_FIELDS)], WrapValidator(_bounded_features)]


class ProfileRequest(RequestBody):
    user_id: UserId = Field(description="The user the profile is for (cache key).")
    features: Features = Field(
        default_factory=dict,
        description="Raw feature values per field, oldest first; a single value may be given bare. Values are "
        "stripped of surrounding whitespace as the training data was, and empty ones ignored. A value "
        "may repeat (each occurrence counts once), or a field may be an object {value: count} (keys oldest "
        "first; counts finite numbers >= 0, 0 drops the value, counts above 1e6 count as 1e6; a count may be "
        'an object {"count": c, "items": d}, d the distinct clicked items that carried the value, 0 < d <= c: '
        "the default model reads it for clicked_tags, and takes d = c without it). The paper's "
        "models keep the most recent distinct values; the default model keeps the most frequent. The field "
        "clicked_items (item ids, oldest first) is read by the default model's history path only.",
    )
    k: int | None = Field(None, ge=1, strict=True, description="Number of tags (default from settings, at most max_k).")
    explain: bool = Field(False, strict=True, description="Also return attention weights and each tag's score.")
    store: bool = Field(
        True,
        strict=True,
        description="Write the profile to the cache (needs a write key once write keys are configured); false "
        "computes and answers without writing anything.",
    )


class ProfilesRequest(RequestBody):
    # a call stops at its first bad user: at most one user's problems are read
    users: list[ProfileRequest] = Field(min_length=1, max_length=MAX_USERS_PER_CALL, fail_fast=True)


class TagScore(BaseModel):
    tag: str
    score: float


class FeatureWeight(BaseModel):
    value: str
    weights: list[float] = Field(description="Attention weight of this value for each head.")


class FieldExplanation(BaseModel):
    field: str
    merge_weights: list[float] = Field(description="The field's weight at the merge level, per head.")
    values: list[FeatureWeight]


class TagScoreParts(TagScore):
    model: float | None = Field(
        None, description="utpm-hist: the model part u . o_t + b_t of the score (null for the paper's models)."
    )
    history: float | None = Field(
        None, description="utpm-hist: the history part g(phi) (0 for a tag not in the user's history)."
    )


class Explanation(BaseModel):
    heads: int
    fields: list[FieldExplanation]
    tag_scores: list[TagScoreParts]


class ProfileResponse(BaseModel):
    arm: str | None = Field(
        None,
        description="The A/B arm that served it: champion, or challenger (service.ab); profile routes always name it.",
    )
    user_id: str
    model_version: str
    tags: list[TagScore]
    unknown: dict[str, list[str]] = Field(
        description="Values not in the vocabulary, per field; like rare values in training they count only as "
        "the shared out-of-vocabulary bucket."
    )
    all_unknown: bool = Field(
        description="True when no feature value was known: the profile rests on the model's prior alone."
    )
    computed_at: str = Field(description="When the profile was computed (UTC, ISO 8601 with ms).")
    expires_at: str = Field(description="When the cache drops it (UTC, ISO 8601 with ms).")
    stale: bool = Field(
        description="True when the served model has no profile for this user yet and this is the most recent "
        "older model version's (its own model_version says which); false otherwise."
    )
    cached: bool
    explanation: Explanation | None = None


class ProfilesResponse(BaseModel):
    profiles: list[ProfileResponse]


class DeleteResponse(BaseModel):
    user_id: str
    deleted: int = Field(description="Cached profiles removed (0 when there were none: deleting is idempotent).")
    feedback_sets: int = Field(
        description="The feedback store's per-user sets (browsed and clicked tags per day and version) removed."
    )
    model_versions: list[str] = Field(description="The versions whose profile of this user was removed if cached.")


class ForgetRequest(RequestBody):
    user_ids: Annotated[
        list[UserId],
        Field(min_length=1, max_length=MAX_USERS_PER_CALL, fail_fast=True, description="Users to forget."),
    ]


class ForgetResult(BaseModel):
    user_id: str
    deleted: int = Field(description="This user's cached profiles removed (0 when there were none).")


class ForgetResponse(BaseModel):
    deleted: int = Field(description="Cached profiles removed in all.")
    feedback_sets: int = Field(description="The feedback store's per-user sets of these users removed.")
    model_versions: list[str] = Field(description="The versions whose profiles of these users were removed if cached.")
    results: list[ForgetResult] = Field(
        description="One per requested user id, in the request's order (a repeated id repeats its result)."
    )


class Problem(BaseModel):
    """RFC 9457 problem details: the body of every 4xx/5xx (media type application/problem+json)."""

    type: str = Field(description="Stable URN per kind of error, e.g. urn:utpm:problem:not_cached.")
    title: str = Field(description="Short summary of the kind of error.")
    status: int = Field(description="The HTTP status code.")
    detail: str = Field(description="What went wrong with this request, for a person.")
    request_id: str = Field(description="The request's id (X-Request-ID), also on every log line it caused.")
    errors: list[dict[str, object]] | None = Field(
        None,
        description="Schema violations (urn:utpm:problem:validation only): loc, msg, type each. A bad field or "
        "count is one violation at its place (type field_type, count_type or number_type where no accepted "
        "form matched), not one per form tried.",
    )


class ReloadRequest(RequestBody):
    bundle: str = Field(min_length=1, description="Bundle directory, under the configured bundle root.")


class ReloadResponse(BaseModel):
    model_version: str
    previous_version: str
    fleet: dict[str, int | None] | None = Field(
        None,
        description="With fleet sync: the sequence number of the state every replica now follows (null: not shared).",
    )
