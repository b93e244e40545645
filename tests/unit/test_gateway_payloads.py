"""gateway/payloads.py: the one check of a submit's type and payload, and the OpenAPI
document it adds each type's payload to."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from gateway.app import create_app
from gateway.payloads import JobType, JobTypes
from schemas.errors import InvalidPayload, UnknownJobType
from schemas.settings import Settings


class Size(BaseModel):
    width: int
    height: int


class JobResource(BaseModel):  # named like one of the API's own components
    model_config = ConfigDict(extra="forbid")

    size: Size
    label: str = ""


TYPES = JobTypes([JobType("render", JobResource, timeout_s=60), "anything"])


def test_a_type_known_by_name_alone_takes_any_object() -> None:
    TYPES.check("anything", {"x": [1, None]})
    assert TYPES.schema("anything") == {"type": "object", "additionalProperties": True}


def test_an_unknown_type_says_what_is_known() -> None:
    with pytest.raises(UnknownJobType, match="known types: anything, render"):
        TYPES.check("teleport", {})


def test_errors_are_located_where_the_payload_is() -> None:
    with pytest.raises(InvalidPayload) as caught:
        TYPES.check("render", {"size": {"width": "wide"}, "colour": 1})
    assert str(caught.value) == (
        "payload.size.width: Input should be a valid integer, unable to parse string as an "
        "integer; payload.size.height: Field required; payload.colour: Extra inputs are not "
        "permitted"
    )
    # A body nested in another (a flow's children) is checked by the same call.
    with pytest.raises(InvalidPayload) as caught:
        TYPES.check("render", {}, at=("children", 2, "payload"))
    assert [e["loc"] for e in caught.value.errors] == [("children", 2, "payload", "size")]


def test_the_openapi_document_has_each_payload_beside_the_apis_own_schemas() -> None:
    app = create_app(Settings(_env_file=None), job_types=TYPES)  # type: ignore[call-arg]
    doc = app.openapi()
    components: dict[str, Any] = doc["components"]["schemas"]
    assert "links" in components["JobResource"]["properties"]  # the API's, not clobbered
    render = components["payload.JobResource"]
    assert render["properties"]["size"] == {"$ref": "#/components/schemas/payload.Size"}
    assert components["payload.Size"]["required"] == ["width", "height"]
    body = doc["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    payloads = {
        v["properties"]["type"]["const"]: v["properties"]["payload"]
        for v in body["schema"]["oneOf"]
    }
    assert payloads == {
        "anything": {"type": "object", "additionalProperties": True},
        "render": {"$ref": "#/components/schemas/payload.JobResource"},
    }
    assert app.openapi() is doc  # built once
