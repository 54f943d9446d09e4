"""A bad body just under the size limit costs what one problem costs: pydantic is stopped at the
first bad field value, unknown key or id, and refuses more fields or users than a request may have
before reading any (service/schemas.py). Counted in errors, not timed: what such a body costs the
event loop is measured by `utpm bench reliability bad-bodies` (docs/reliability.md)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel, ValidationError

from loadtest.hostile import HostileBody, hostile_bodies
from service.config import MAX_LOOKUP_USERS_CEILING
from service.main import create_app
from service.routes.feedback import FeedbackRequest
from service.routes.lookup import LookupRequest
from service.schemas import MAX_FIELDS, MAX_USERS_PER_CALL, ForgetRequest, ProfileRequest, ProfilesRequest
from tests.serving import API_KEY, assert_problem, settings_for

MODEL_OF: dict[str, type[BaseModel]] = {
    "/profile": ProfileRequest,
    "/profiles": ProfilesRequest,
    "/profiles/lookup": LookupRequest,
    "/profiles/forget": ForgetRequest,
    "/feedback": FeedbackRequest,
}
BODIES = list(hostile_bodies())


@pytest.fixture(scope="module")
def client(bundles: dict[str, Path]) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(bundles["a"], None))) as c:
        yield c


@pytest.mark.parametrize("hostile", BODIES, ids=[b.name for b in BODIES])
def test_a_bad_body_is_read_up_to_its_first_problem(hostile: HostileBody) -> None:
    # the service's hot POST route validates the JSON bytes, the others the parsed body (FastAPI)
    model = MODEL_OF[hostile.path]
    with pytest.raises(ValidationError) as e:
        if hostile.path == "/profile":
            model.model_validate_json(hostile.body)
        else:
            model.model_validate(orjson.loads(hostile.body))
    # one value: the field's union members and its count's (at 3c0699f: 72,000-524,000)
    assert e.value.error_count() <= 5, (hostile.name, e.value.error_count())


@pytest.mark.parametrize("hostile", BODIES, ids=[b.name for b in BODIES])
def test_a_bad_body_gets_a_422_naming_its_first_problem(client: TestClient, hostile: HostileBody) -> None:
    headers = {"content-type": "application/json", "x-api-key": API_KEY}
    body = assert_problem(client.post(hostile.path, content=hostile.body, headers=headers), 422, "validation")
    assert len(body["errors"]) == 1 and body["detail"].startswith(".".join(map(str, body["errors"][0]["loc"][1:])))


def test_the_bounds_are_in_the_openapi_schema(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    features = schemas["ProfileRequest"]["properties"]["features"]
    assert features["maxProperties"] == MAX_FIELDS and "maxLength" not in features  # an object's bound
    assert schemas["ProfilesRequest"]["properties"]["users"]["maxItems"] == MAX_USERS_PER_CALL
    assert schemas["ForgetRequest"]["properties"]["user_ids"]["maxItems"] == MAX_USERS_PER_CALL
    assert schemas["LookupRequest"]["properties"]["user_ids"]["maxItems"] == MAX_LOOKUP_USERS_CEILING
