"""A field's or a count's bad value is one error that names the problem, not one per union member."""

from __future__ import annotations

import random
from typing import Any

import pytest
from pydantic import ValidationError

from service.schema_errors import (
    COUNT_FORMS,
    COUNT_MEMBERS,
    FIELD_FORMS,
    FIELD_MEMBERS,
    UNKNOWN_KEY,
    first_problems,
    readable,
)
from service.schemas import MAX_FIELDS, ProfileRequest, ProfilesRequest


def errors_of(body: dict[str, Any], model: type[ProfileRequest] | type[ProfilesRequest] = ProfileRequest) -> list[Any]:
    with pytest.raises(ValidationError) as e:
        model.model_validate(body)
    return [{**err, "loc": ("body", *err["loc"])} for err in e.value.errors(include_url=False)]


def readable_of(features: Any) -> list[tuple[tuple[Any, ...], str, str]]:
    out = readable(errors_of({"user_id": "u", "features": {"f": features}}))
    return [(e["loc"], e["type"], e["msg"]) for e in out]


F = ("body", "features", "f")


@pytest.mark.parametrize(
    ("features", "expected"),
    [
        (None, [(F, "field_type", f"a field must be {FIELD_FORMS}, got null")]),
        (3, [(F, "field_type", f"a field must be {FIELD_FORMS}, got a number")]),
        (True, [(F, "field_type", f"a field must be {FIELD_FORMS}, got a boolean")]),
        ("x" * 600, [(F, "string_too_long", "String should have at most 512 characters")]),
        # read up to the first bad value (`fail_fast`), so one problem however many follow
        (["a", 1, None], [((*F, 1), "string_type", "Input should be a valid string")]),
        ({"v": "3"}, [((*F, "v"), "count_type", f"a count must be {COUNT_FORMS}, got a string")]),
        ({"v": None}, [((*F, "v"), "count_type", f"a count must be {COUNT_FORMS}, got null")]),
        ({"v": [1]}, [((*F, "v"), "count_type", f"a count must be {COUNT_FORMS}, got a list")]),
        ({"v": True}, [((*F, "v"), "count_type", f"a count must be {COUNT_FORMS}, got a boolean")]),
        ({"v": {"count": "2"}}, [((*F, "v", "count"), "number_type", "must be a number, got a string")]),
        ({"v": {"count": 2, "items": None}}, [((*F, "v", "items"), "number_type", "must be a number, got null")]),
        ({"v": {"count": 2, "itms": 1}}, [((*F, "v", "itms"), "extra_forbidden", UNKNOWN_KEY)]),
        ({"v": {"items": 1}}, [((*F, "v", "count"), "missing", "Field required")]),
        # a value named like a member label is still a value
        ({"int": "x", "ok": 2}, [((*F, "int"), "count_type", f"a count must be {COUNT_FORMS}, got a string")]),
    ],
)
def test_each_bad_value_is_one_error_at_its_place(features: Any, expected: list[Any]) -> None:
    assert readable_of(features) == expected


def test_other_errors_pass_unchanged_and_in_order() -> None:
    raw = errors_of({"user_id": "u", "features": {"f": 3, "g": ["a"], "h": {"v": "x"}}, "k": "5", "extra": 1})
    out = readable(raw)
    assert [e["loc"] for e in out] == [F, ("body", "features", "h", "v"), ("body", "k"), ("body", "extra")]
    others = [e for e in raw if e["loc"][1] != "features"]
    assert out[2:] == [{**e, "loc": tuple(e["loc"])} for e in others]


def test_profiles_requests_are_read_under_their_user() -> None:
    raw = errors_of(
        {"users": [{"user_id": "a", "features": {}}, {"user_id": "b", "features": {"f": {"v": "x"}}}]}, ProfilesRequest
    )
    assert [(e["loc"], e["type"]) for e in readable(raw)] == [
        (("body", "users", 1, "features", "f", "v"), "count_type")
    ]


def test_no_member_label_survives_and_no_bad_input_loses_its_error() -> None:
    rng = random.Random(0)
    atoms: list[Any] = [
        None,
        True,
        1,
        -2.5,
        "s",
        "",
        [],
        {},
        [1],
        ["a"],
        {"count": 1},
        {"count": "1"},
        {"items": 1},
        {"count": 1, "x": 2},
    ]
    labels = set(FIELD_MEMBERS) | set(COUNT_MEMBERS)
    for _ in range(300):
        features = {
            f"f{i}": rng.choice([rng.choice(atoms), {f"v{j}": rng.choice(atoms) for j in range(rng.randint(1, 3))}])
            for i in range(rng.randint(1, 3))
        }
        try:
            ProfileRequest.model_validate({"user_id": "u", "features": features})
        except ValidationError as e:
            out = readable(e.errors(include_url=False))
            assert out, features
            assert not any(part in labels for err in out for part in err["loc"]), (features, out)
            bad_fields = {err["loc"][1] for err in e.errors()}
            assert {err["loc"][1] for err in out} == bad_fields  # every bad field still reported


def test_errors_without_a_location_pass_unchanged() -> None:
    assert readable([{"msg": "bad", "type": "value_error"}]) == [{"msg": "bad", "type": "value_error", "loc": ()}]


def test_first_problems_lists_at_most_the_limit_and_says_so() -> None:
    raw = errors_of({"user_id": "u", "features": {f"f{i}": 1 for i in range(MAX_FIELDS)}, "k": "5"})
    listed, more = first_problems(raw, 50)
    assert more and len(listed) == 50
    assert listed == readable(raw)[:50]  # the same problems readable gives, the first of them
    few, more = first_problems(raw[:30], 50)  # 10 fields: under the limit
    assert not more and few == readable(raw[:30])


def test_a_fields_first_value_is_read_with_it_so_its_union_is_never_cut_in_two() -> None:
    features: dict[str, Any] = {f"f{i}": 1 for i in range(49)}
    features["g"] = {"v1": "x", "v2": "y"}
    listed, more = first_problems(errors_of({"user_id": "u", "features": {**features, "h": 1}}), 50)
    # without its first value, g's list and string members' mismatches alone would say "got an object"
    assert more and listed[-1]["loc"] == ("body", "features", "g", "v1") and listed[-1]["type"] == "count_type"
