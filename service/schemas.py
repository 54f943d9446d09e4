"""Request and response bodies of the API (the OpenAPI schema at /docs is generated from these)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

UserId = Annotated[str, StringConstraints(min_length=1, max_length=256, strip_whitespace=True)]
FeatureValue = Annotated[str, StringConstraints(max_length=512)]


class ProfileRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: UserId = Field(description="The user the profile is for (cache key).")
    features: dict[str, list[FeatureValue] | FeatureValue] = Field(
        default_factory=dict,
        description="Raw feature values per field, oldest first; a single value may be given bare. "
        "Lists longer than a field's max length keep the most recent (last) values.",
    )
    k: int | None = Field(None, ge=1, description="Number of tags (default from settings, at most max_k).")
    explain: bool = Field(False, description="Also return attention weights and each tag's score.")


class ProfilesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    users: list[ProfileRequest] = Field(min_length=1)


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


class Explanation(BaseModel):
    heads: int
    fields: list[FieldExplanation]
    tag_scores: list[TagScore]


class ProfileResponse(BaseModel):
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
    cached: bool
    explanation: Explanation | None = None


class ProfilesResponse(BaseModel):
    profiles: list[ProfileResponse]


class ErrorResponse(BaseModel):
    detail: str | list[dict[str, object]]


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bundle: str = Field(min_length=1, description="Bundle directory, under the configured bundle root.")


class ReloadResponse(BaseModel):
    model_version: str
    previous_version: str
