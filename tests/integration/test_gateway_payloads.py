"""Payloads checked at the door: the gateway (as `conveyor gateway` builds it, on real Redis)
refuses a payload that does not fit its type's model with a 422 naming the field, before
anything is queued; `GET /v1/job-types` and the OpenAPI document show each type's schema."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from asgi_lifespan import LifespanManager

from conveyor.gateway_app import gateway_app
from gateway.app import create_app
from producer import Producer
from schemas.settings import Settings

pytestmark = pytest.mark.integration

A = {"Authorization": "Bearer key-a"}


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory(api_keys={"key-a": "acme"})  # the built-in handlers


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = gateway_app(settings)
    transport = httpx.ASGITransport(app, raise_app_exceptions=False)
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=transport, base_url="http://gw") as http,
    ):
        yield http


async def nothing_queued(client: httpx.AsyncClient, redis: aioredis.Redis, queue: str) -> bool:
    producer = Producer(redis, Settings(_env_file=None))  # type: ignore[call-arg]
    listed = (await client.get("/v1/jobs", headers=A)).json()["items"]
    return listed == [] and await redis.xlen(producer.keys(queue).jobs) == 0


@pytest.mark.parametrize(
    ("job_type", "payload", "message"),
    [
        # an unknown field: the typo that used to burn five attempts
        (
            "sleep",
            {"secs": 1},
            "body.payload.seconds: Field required; "
            "body.payload.secs: Extra inputs are not permitted",
        ),
        ("sleep", {}, "body.payload.seconds: Field required"),  # a missing required field
        (
            "sleep",
            {"seconds": "soon"},
            "body.payload.seconds: Input should be a valid number, unable to parse string as a "
            "number",
        ),
        ("sleep", {"seconds": 1, "steps": 0}, "body.payload.steps: Input should be greater"),
        ("ingest_url", {"url": ["x"]}, "body.payload.url: Input should be a valid string"),
    ],
)
async def test_a_payload_that_does_not_fit_is_422_naming_the_field_and_nothing_is_queued(
    client: httpx.AsyncClient,
    redis: aioredis.Redis,
    queue_name: str,
    job_type: str,
    payload: dict[str, Any],
    message: str,
) -> None:
    response = await client.post("/v1/jobs", json={"type": job_type, "payload": payload}, headers=A)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "validation_error"
    assert body["message"].startswith(message), body
    assert body["detail"][0]["loc"][:2] == ["body", "payload"]
    assert await nothing_queued(client, redis, queue_name)


async def test_every_payload_of_a_flow_is_checked_where_it_is(
    client: httpx.AsyncClient, redis: aioredis.Redis, queue_name: str
) -> None:
    child = {"type": "sleep", "payload": {"seconds": 1}}
    body = {
        "type": "noop",
        "children": [child, {**child, "children": [{"type": "sleep", "payload": {"secs": 1}}]}],
    }
    response = await client.post("/v1/jobs", json=body, headers=A)
    assert response.status_code == 422, response.text
    assert response.json()["message"].startswith(
        "body.children.1.children.0.payload.seconds: Field required; "
        "body.children.1.children.0.payload.secs: Extra inputs are not permitted"
    )
    assert await nothing_queued(client, redis, queue_name)


async def test_a_payload_that_fits_is_queued_as_sent(client: httpx.AsyncClient) -> None:
    for job_type, payload in [
        ("sleep", {"seconds": 1, "steps": 2}),
        ("noop", {"anything": [1, {"at": "all"}]}),
        ("ingest_url", {"url": "https://example.com/", "max_bytes": 10}),
    ]:
        response = await client.post(
            "/v1/jobs", json={"type": job_type, "payload": payload}, headers=A
        )
        assert response.status_code == 202, response.text
        assert response.json()["payload"] == payload


async def test_a_bulk_item_with_a_bad_payload_fails_alone(
    client: httpx.AsyncClient, redis: aioredis.Redis, queue_name: str
) -> None:
    items = [
        {"type": "sleep", "payload": {"secs": 1}},
        {"type": "sleep", "payload": {"seconds": 1}},
        {"type": "ingest_url", "payload": {"url": "https://example.com/", "max_bytes": -1}},
    ]
    response = await client.post("/v1/jobs/bulk", json={"jobs": items}, headers=A)
    assert response.status_code == 202, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == [422, 202, 422]
    assert "payload.secs: Extra inputs are not permitted" in results[0]["error"]["message"]
    assert "payload.max_bytes: Input should be greater" in results[2]["error"]["message"]
    listed = (await client.get("/v1/jobs", headers=A)).json()["items"]
    assert [job["id"] for job in listed] == [results[1]["job"]["id"]]


async def test_job_types_lists_each_type_with_its_payload_schema(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    assert (await client.get("/v1/job-types")).status_code == 401
    response = await client.get("/v1/job-types", headers=A)
    assert response.status_code == 200
    types = {t["name"]: t for t in response.json()}
    assert list(types) == ["ingest_url", "noop", "sleep"]
    sleep = types["sleep"]
    assert (sleep["timeout_s"], sleep["max_tries"]) == (settings.job_timeout_s, 5)
    schema = sleep["payload_schema"]
    assert schema["required"] == ["seconds"] and schema["additionalProperties"] is False
    assert set(schema["properties"]) == {"seconds", "steps", "fail_attempts"}
    assert schema["properties"]["steps"]["default"] == 10
    assert types["noop"]["payload_schema"]["additionalProperties"] is True
    assert types["ingest_url"]["payload_schema"]["required"] == ["url"]


async def test_the_openapi_document_shows_each_types_payload(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    components = doc["components"]["schemas"]
    job_types = (await client.get("/v1/job-types", headers=A)).json()
    body = doc["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    variants = {v["properties"]["type"]["const"]: v for v in body["schema"]["oneOf"]}
    assert set(variants) == {t["name"] for t in job_types}
    for t in job_types:
        ref = variants[t["name"]]["properties"]["payload"]["$ref"]
        assert components[ref.removeprefix("#/components/schemas/")] == t["payload_schema"]
    assert "payload" in variants["sleep"]["required"]  # {} does not fit
    assert "payload" not in variants["noop"]["required"]
    assert {"JobResource", "SubmitRequest", "payload.sleep"} <= set(components)


async def test_a_gateway_given_type_names_alone_takes_any_payload(settings: Settings) -> None:
    app = create_app(settings, job_types=["noop", "teleport"])
    transport = httpx.ASGITransport(app, raise_app_exceptions=False)
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=transport, base_url="http://gw") as http,
    ):
        response = await http.post(
            "/v1/jobs", json={"type": "teleport", "payload": {"to": "mars"}}, headers=A
        )
        assert response.status_code == 202, response.text
        unknown = await http.post("/v1/jobs", json={"type": "sleep"}, headers=A)
        assert unknown.status_code == 422 and "known types: noop, teleport" in unknown.text
        [teleport] = [
            t
            for t in (await http.get("/v1/job-types", headers=A)).json()
            if t["name"] == "teleport"
        ]
        assert teleport["payload_schema"] == {"type": "object", "additionalProperties": True}
