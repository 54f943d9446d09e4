"""The service on the default model's bundle: counts in requests, bad input, explain's score parts,
and profiles that differ between users. Real redis-server, ONNX Runtime and FAISS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.schema_errors import COUNT_FORMS, FIELD_FORMS, UNKNOWN_KEY
from service.schemas import MAX_FIELDS
from tests.conftest import RedisServer
from tests.serving import assert_problem, settings_for

ANIMATION = {"clicked_tags": {"disney": 4, "animation": 3, "pixar": 2}, "clicked_categories": ["Animation"]}
SCI_FI = {"clicked_tags": ["sci-fi", "atmospheric", "sci-fi", "dystopia"], "clicked_categories": ["Sci-Fi"]}


@pytest.fixture()
def client(hist_bundle: Path, redis_server: RedisServer) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(hist_bundle, redis_server))) as c:
        yield c


def profile(client: TestClient, features: object, **kw: object) -> dict[str, object]:
    r = client.post("/profile", json={"user_id": "u", "features": features, "k": 10, **kw})
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


def tags(body: dict[str, object]) -> list[str]:
    return [t["tag"] for t in cast(list[dict[str, str]], body["tags"])]


def test_contrasting_users_get_different_profiles_led_by_their_own_tags(client: TestClient) -> None:
    # a one-epoch fixture model stays near its popularity start: the history path is what separates them
    a, b = tags(profile(client, ANIMATION)), tags(profile(client, SCI_FI))
    assert set(a[:3]) != set(b[:3])
    assert {"disney", "animation", "pixar"} & set(a[:3])
    assert {"sci-fi", "atmospheric", "dystopia"} & set(b[:3])


def test_counts_as_an_object_or_as_repeats_mean_the_same(client: TestClient) -> None:
    as_object = profile(client, {"clicked_tags": {"sci-fi": 3, "atmospheric": 1}}, explain=True)
    as_repeats = profile(client, {"clicked_tags": ["atmospheric", "sci-fi", "sci-fi", "sci-fi"]}, explain=True)
    for body in (as_object, as_repeats):
        history = {p["tag"]: p["history"] for p in body["explanation"]["tag_scores"]}  # type: ignore[index]
        assert history["sci-fi"] > 0.0 and history["sci-fi"] > history.get("atmospheric", 0.0)
    more = profile(client, {"clicked_tags": {"atmospheric": 1, "sci-fi": 30}})
    # a larger count raises the tag's score through the history path
    first = {t["tag"]: t["score"] for t in as_object["tags"]}  # type: ignore[attr-defined]
    second = {t["tag"]: t["score"] for t in more["tags"]}  # type: ignore[attr-defined]
    assert second["sci-fi"] > first["sci-fi"]


def test_a_count_with_its_distinct_items_reaches_the_history_path(client: TestClient) -> None:
    """{"count": c, "items": d}: d is the tag's distinct clicked items (phi's log1p_distinct_items), which
    a bare count or repeated values can only take to be c."""

    def history_part(count: object) -> float:
        body = profile(client, {"clicked_tags": {"sci-fi": count, "atmospheric": 1}}, explain=True)
        parts = {p["tag"]: p["history"] for p in body["explanation"]["tag_scores"]}  # type: ignore[index]
        return float(parts["sci-fi"])

    assert history_part({"count": 6, "items": 6}) == history_part({"count": 6}) == history_part(6)
    assert history_part({"count": 6, "items": 1}) != history_part(6)


def test_readyz_says_the_bundle_at_its_linear_start_is_served_without_the_model(client: TestClient) -> None:
    body = client.get("/readyz").json()
    shown = (body["status"], body["scorer"], body["index"], body["device"]["index"])
    assert shown == ("ready", "linear", "none", "none")
    assert body["tags"] > 2


def test_linear_scorer_off_serves_the_same_bundle_through_the_model_and_its_index(
    hist_bundle: Path, redis_server: RedisServer
) -> None:
    with TestClient(create_app(settings_for(hist_bundle, redis_server, linear_scorer=False))) as graph:
        body = graph.get("/readyz").json()
        shown = (body["status"], body["scorer"], body["index"], body["device"]["index"])
        assert shown == ("ready", "model", "Flat", "cpu")
        served = tags(profile(graph, SCI_FI))
    with TestClient(create_app(settings_for(hist_bundle, redis_server))) as linear:
        assert linear.get("/readyz").json()["tags"] == body["tags"]
        assert tags(profile(linear, SCI_FI)) == served


def test_the_old_list_form_still_works(client: TestClient) -> None:
    body = profile(client, {"clicked_tags": ["sci-fi", "dark comedy"], "clicked_categories": "Comedy"})
    assert len(tags(body)) == 10 and body["all_unknown"] is False


def test_values_are_stripped_as_the_training_data_was_and_blank_ones_are_absent(client: TestClient) -> None:
    padded = {
        "clicked_tags": {" disney": 4, "animation ": 3, "pixar": 2, " ": 7},
        "clicked_categories": [" Animation ", ""],
    }
    body = profile(client, padded)
    assert body["unknown"] == {} and tags(body) == tags(profile(client, ANIMATION))
    as_list = profile(
        client, {"clicked_tags": [" sci-fi", "atmospheric", "sci-fi ", "dystopia"], "clicked_categories": "Sci-Fi "}
    )
    assert as_list["unknown"] == {} and tags(as_list) == tags(profile(client, SCI_FI))


def test_explain_splits_each_score_into_model_and_history_parts(client: TestClient) -> None:
    body = profile(client, SCI_FI, explain=True)
    expl = body["explanation"]
    assert isinstance(expl, dict)
    parts = expl["tag_scores"]
    assert [p["tag"] for p in parts] == tags(body)
    for p in parts:
        assert p["model"] + p["history"] == pytest.approx(p["score"], abs=1e-4)
    own = [p for p in parts if p["tag"] in SCI_FI["clicked_tags"]]
    assert own and all(p["history"] != 0.0 for p in own)
    field_names = [f["field"] for f in expl["fields"]]
    assert "clicked_tags" in field_names


@pytest.mark.parametrize(
    ("features", "why"),
    [
        ({"clicked_tags": {"sci-fi": -1}}, "the count of 'sci-fi' must be a finite number >= 0"),
        # the schema's: one line naming the value (service/schema_errors.py), not one per union member
        ({"clicked_tags": {"sci-fi": "3"}}, f"clicked_tags.sci-fi: a count must be {COUNT_FORMS}, got a string"),
        ({"clicked_tags": {"sci-fi": True}}, "clicked_tags.sci-fi: a count must be"),  # nor is a boolean
        ({"clicked_tags": {"sci-fi": [1]}}, "clicked_tags.sci-fi: a count must be"),
        ({"clicked_tags": {"sci-fi": None}}, "clicked_tags.sci-fi: a count must be"),
        (
            {"clicked_tags": {"sci-fi": {"count": 2, "items": 3}}},
            "items of 'sci-fi' must be a number above 0 and at most its count 2",
        ),
        ({"clicked_tags": {"sci-fi": {"count": 2, "items": 0}}}, "items of 'sci-fi' must be a number above 0"),
        ({"clicked_tags": {"sci-fi": {"count": 2, "items": "1"}}}, "clicked_tags.sci-fi.items: must be a number"),
        ({"clicked_tags": {"sci-fi": {"count": 2, "itms": 1}}}, f"clicked_tags.sci-fi.itms: {UNKNOWN_KEY}"),
        ({"clicked_tags": {"sci-fi": {"items": 1}}}, "clicked_tags.sci-fi.count: Field required"),
        ({"clicked_tags": 5}, f"features.clicked_tags: a field must be {FIELD_FORMS}, got a number"),
    ],
)
def test_bad_counts_are_a_clear_422(client: TestClient, features: object, why: str) -> None:
    r = client.post("/profile", json={"user_id": "u", "features": features})
    body = assert_problem(r, 422)
    assert why in body["detail"]
    assert ";" not in body["detail"]  # one problem, one error


def test_a_body_of_many_unknown_keys_is_read_up_to_the_first(client: TestClient) -> None:
    unknown = {f"x{i}": True for i in range(5000)}
    body = assert_problem(client.post("/profile", json={"user_id": "u", **unknown}), 422)
    assert [(e["loc"], e["type"]) for e in body["errors"]] == [(["body", "x0"], "extra_forbidden")]


def test_more_fields_than_a_request_may_have_are_refused_before_any_is_read(client: TestClient) -> None:
    features = {f"f{i}": True for i in range(MAX_FIELDS + 1)}  # every one bad: none of them is reported
    body = assert_problem(client.post("/profile", json={"user_id": "u", "features": features}), 422)
    assert [(e["loc"], e["type"]) for e in body["errors"]] == [(["body", "features"], "too_long")]
    assert f"at most {MAX_FIELDS} items" in body["detail"] and f"not {MAX_FIELDS + 1}" in body["detail"]


def test_a_field_s_values_are_read_up_to_the_first_bad_one(client: TestClient) -> None:
    features = {"clicked_tags": ["sci-fi", 1, 2, 3], "clicked_categories": {"Drama": "x", "Comedy": "y"}}
    body = assert_problem(client.post("/profile", json={"user_id": "u", "features": features}), 422)
    assert [e["loc"] for e in body["errors"]] == [
        ["body", "features", "clicked_tags", 1],
        ["body", "features", "clicked_categories", "Drama"],
    ]


@pytest.mark.parametrize("raw", [b"Infinity", b"NaN", b"-Infinity"])
def test_non_finite_counts_are_a_clear_422(client: TestClient, raw: bytes) -> None:
    body = b'{"user_id": "u", "features": {"clicked_tags": {"sci-fi": ' + raw + b"}}}"
    r = client.post("/profile", content=body, headers={"content-type": "application/json"})
    assert_problem(r, 422)


def test_zero_and_huge_counts_give_a_profile_from_the_known_parts(client: TestClient) -> None:
    zero = profile(client, {"clicked_tags": {"sci-fi": 0, "animation": 2}}, explain=True)
    parts = {p["tag"]: p["history"] for p in zero["explanation"]["tag_scores"]}  # type: ignore[index]
    assert parts.get("sci-fi", 0.0) == 0.0  # a zero count drops the value
    huge = profile(client, {"clicked_tags": {"sci-fi": 1e300, "animation": 1}})
    assert "sci-fi" in tags(huge)  # clamped to 1e6, not an error


def test_an_integer_count_beyond_float64_is_clamped_as_in_python(client: TestClient) -> None:
    """A JSON integer has no size limit: it is clamped to 1e6 like any count above it (as `parse_field`
    clamps a Python int), where the float parse of it would be inf and a 422."""

    def post(count: bytes) -> Any:
        body = b'{"user_id": "u", "features": {"clicked_tags": {"sci-fi": ' + count + b', "animation": 1}}}'
        return client.post("/profile", content=body, headers={"content-type": "application/json"})

    digits = b"9" * 400
    huge = post(digits)
    assert huge.status_code == 200 and huge.json()["tags"] == post(b"1000000").json()["tags"]
    assert "must be a finite number >= 0" in assert_problem(post(b"-" + digits), 422)["detail"]


def test_empty_and_unknown_histories_get_the_prior(client: TestClient) -> None:
    empty = profile(client, {})
    assert empty["all_unknown"] is True and len(tags(empty)) == 10
    none: tuple[dict[str, object], ...] = ({"clicked_tags": []}, {"clicked_tags": {}})
    for features in none:
        assert tags(profile(client, features)) == tags(empty)
    unknown = profile(client, {"clicked_tags": {"no-such-tag": 5}, "clicked_categories": ["Nope"]})
    assert unknown["all_unknown"] is True and unknown["unknown"] == {
        "clicked_tags": ["no-such-tag"],
        "clicked_categories": ["Nope"],
    }
    assert tags(unknown) == tags(empty)
    partly = profile(client, {"clicked_tags": {"no-such-tag": 5, "pixar": 1}}, k=1000)
    prior = tags(profile(client, {}, k=1000))
    assert partly["all_unknown"] is False and partly["unknown"] == {"clicked_tags": ["no-such-tag"]}
    assert tags(partly).index("pixar") < prior.index("pixar")  # the known part moved its own tag up


PIXAR_FILMS = ["1", "2355", "3114", "4886", "6377"]  # MovieLens ids: Toy Story ... Finding Nemo


def test_clicked_items_alone_give_a_profile_from_what_users_who_clicked_them_clicked(client: TestClient) -> None:
    prior = tags(profile(client, {}))
    body = profile(client, {"clicked_items": [*PIXAR_FILMS, "no-such-item"]}, explain=True)
    assert body["all_unknown"] is False and body["unknown"] == {"clicked_items": ["no-such-item"]}
    assert tags(body) != prior
    parts = body["explanation"]["tag_scores"]  # type: ignore[index]
    assert any(p["history"] > 0 for p in parts)  # the item neighbour score reaches the history part
    # with tags too, the items move the profile
    assert tags(profile(client, {**SCI_FI, "clicked_items": PIXAR_FILMS})) != tags(profile(client, SCI_FI))
    assert_problem(client.post("/profile", json={"user_id": "u", "features": {"clicked_items": [3]}}), 422)


def test_a_paper_bundle_accepts_counts_too(bundles: dict[str, Path], redis_server: RedisServer) -> None:
    with TestClient(create_app(settings_for(bundles["a"], redis_server))) as c:
        as_object = c.post("/profile", json={"user_id": "p", "features": {"clicked_tags": {"sci-fi": 2, "drama": 1}}})
        as_list = c.post("/profile", json={"user_id": "p", "features": {"clicked_tags": ["sci-fi", "drama"]}})
        assert as_object.status_code == as_list.status_code == 200, as_object.text
        assert as_object.json()["tags"] == as_list.json()["tags"]
        # clicked_items is part of the API; a bundle without item neighbours leaves it out
        with_items = c.post(
            "/profile", json={"user_id": "p", "features": {"clicked_tags": ["sci-fi", "drama"], "clicked_items": ["1"]}}
        )
        assert with_items.status_code == 200 and with_items.json()["tags"] == as_list.json()["tags"]
        assert_problem(c.post("/profile", json={"user_id": "p", "features": {"clicked_tags": {"x": -2}}}), 422)
