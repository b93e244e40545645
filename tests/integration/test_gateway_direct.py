"""gateway.direct: a well-formed submit is served in front of FastAPI, and answers exactly as
the FastAPI route would; everything else is FastAPI's, refusals included."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from conveyor.gateway_app import gateway_app
from gateway.access import resource, resource_json
from gateway.deps import Gateway
from gateway.direct import DirectRoutes
from schemas.models import Artifact, Job, StepRecord
from schemas.settings import Settings

pytestmark = pytest.mark.integration

A = {"Authorization": "Bearer key-a"}
KEYS = {"key-a": "acme"}
LIMIT = 4096


@pytest.fixture
def settings(settings_factory: Callable[..., Settings], queue_name: str) -> Settings:
    return settings_factory(
        api_keys=KEYS,
        max_payload_bytes=LIMIT,
        queues=[queue_name, f"{queue_name}-b"],
        token_secret="test-secret",
    )


@pytest.fixture
async def direct_only(app: FastAPI, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A client of DirectRoutes alone: whatever it would hand to FastAPI is a 599."""

    async def fastapi_never(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 599, "headers": []})
        await send({"type": "http.response.body", "body": b"fastapi"})

    direct = DirectRoutes(fastapi_never, settings.max_payload_bytes, settings.max_bulk_bytes)

    async def served(scope: Scope, receive: Receive, send: Send) -> None:
        await direct({**scope, "app": app}, receive, send)

    transport = httpx.ASGITransport(served)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        yield http


def without_token(job: dict[str, Any]) -> dict[str, Any]:
    return {**job, "links": {**job["links"], "events": job["links"]["events"].split("?")[0]}}


async def test_a_submit_is_served_directly_with_the_snapshot_a_read_gives(
    direct_only: httpx.AsyncClient, client: httpx.AsyncClient, queue_name: str
) -> None:
    for body in (
        {"type": "noop", "payload": {"x": 1, "t": "é"}, "queue": queue_name},
        {"type": "noop", "delay_s": 60, "max_attempts": 3, "timeout_s": 5},
    ):
        answer = await direct_only.post("/v1/jobs", json=body, headers=A)
        assert answer.status_code == 202, answer.text
        job = answer.json()
        assert answer.headers["location"] == f"/v1/jobs/{job['id']}"
        assert answer.headers["content-type"] == "application/json"
        read = (await client.get(f"/v1/jobs/{job['id']}", headers=A)).json()
        assert without_token(job) == without_token(read)


async def test_idempotent_replay_is_served_directly_with_the_same_job(
    direct_only: httpx.AsyncClient, queue_name: str
) -> None:
    key = {**A, "Idempotency-Key": "order-7"}
    first = await direct_only.post("/v1/jobs", json={"type": "noop"}, headers=key)
    again = await direct_only.post(
        "/v1/jobs", json={"type": "sleep", "payload": {"seconds": 2}}, headers=key
    )
    assert (first.status_code, again.status_code) == (202, 202)
    assert first.json()["id"] == again.json()["id"]
    assert again.json()["type"] == "noop"
    assert again.headers["idempotency-key"] == "order-7"


async def test_what_direct_does_not_serve_goes_to_fastapi(direct_only: httpx.AsyncClient) -> None:
    body = {"type": "noop"}
    for headers in (
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": "Bearer  key-a"},
        {**A, "Idempotency-Key": "has space"},
    ):
        answer = await direct_only.post("/v1/jobs", json=body, headers=headers)
        assert answer.status_code == 599, headers
    text = await direct_only.post("/v1/jobs", content=b'{"type":"noop"}', headers=A)
    assert text.status_code == 599  # no JSON content type
    big = await direct_only.post("/v1/jobs", json={"type": "noop", "payload": {"x": "y" * LIMIT}})
    assert big.status_code == 599
    bad = await direct_only.post("/v1/jobs", json={"type": "noop", "delay_s": -1}, headers=A)
    assert bad.status_code == 599
    assert (await direct_only.get("/v1/jobs", headers=A)).status_code == 599


async def test_refusals_are_fastapis_own(client: httpx.AsyncClient) -> None:
    missing = await client.post("/v1/jobs", json={"type": "noop"})
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert missing.json() == {"error": "unauthorized", "message": "missing or unknown API key"}
    big = await client.post(
        "/v1/jobs", json={"type": "noop", "payload": {"x": "y" * LIMIT}}, headers=A
    )
    assert big.status_code == 413
    assert big.json()["error"] == "payload_too_large"
    bad = await client.post("/v1/jobs", json={"type": "noop", "delay_s": -1}, headers=A)
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "delay_s"]
    assert bad.json()["message"].startswith("body.delay_s: ")
    broken = await client.post(
        "/v1/jobs", content=b'{"type":', headers={**A, "Content-Type": "application/json"}
    )
    assert broken.status_code == 422
    assert broken.json()["error"] == "validation_error"
    key = await client.post(
        "/v1/jobs", json={"type": "noop"}, headers={**A, "Idempotency-Key": "a b"}
    )
    assert key.status_code == 422
    assert key.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]


async def test_errors_of_the_submit_itself_are_answered_as_the_app_answers(
    direct_only: httpx.AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    unknown = await direct_only.post("/v1/jobs", json={"type": "no-such-type"}, headers=A)
    assert unknown.status_code == 422
    assert unknown.json()["detail"][0]["loc"] == ["body", "type"]
    payload = await direct_only.post(
        "/v1/jobs", json={"type": "sleep", "payload": {"secs": 1}}, headers=A
    )
    assert payload.status_code == 422
    assert payload.json()["error"] == "validation_error"
    queue = await direct_only.post("/v1/jobs", json={"type": "noop", "queue": "nope"}, headers=A)
    assert (queue.status_code, queue.json()["detail"][0]["loc"]) == (422, ["body", "queue"])

    async def broken(*_: Any, **__: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(app.state.gateway.producer, "submit", broken)
    failed = await direct_only.post("/v1/jobs", json={"type": "noop"}, headers=A)
    assert failed.status_code == 500
    assert failed.json() == {"error": "internal", "message": "internal error"}


async def test_a_tenant_over_its_quota_is_429_with_retry_after(
    settings_factory: Callable[..., Settings], queue_name: str
) -> None:
    settings = settings_factory(api_keys=KEYS, queues=[queue_name], tenant_max_active=1)
    application = gateway_app(settings)
    transport = httpx.ASGITransport(application, raise_app_exceptions=False)
    async with (
        LifespanManager(application),
        httpx.AsyncClient(transport=transport, base_url="http://gw") as http,
    ):
        assert (await http.post("/v1/jobs", json={"type": "noop"}, headers=A)).status_code == 202
        over = await http.post("/v1/jobs", json={"type": "noop"}, headers=A)
        assert over.status_code == 429
        assert over.json()["error"] == "too_many_active_jobs"
        assert over.headers["retry-after"] == str(settings.tenant_quota_retry_after_s)


async def test_bulk_is_served_directly_item_by_item(direct_only: httpx.AsyncClient) -> None:
    jobs = [{"type": "noop", "payload": {"i": 1}}, {"type": "nope"}, {"type": "noop", "x": 1}]
    answer = await direct_only.post("/v1/jobs/bulk", json={"jobs": jobs}, headers=A)
    assert answer.status_code == 202, answer.text
    results = answer.json()["results"]
    assert [r["status"] for r in results] == [202, 422, 422]
    assert results[0]["job"]["payload"] == {"i": 1} and results[0]["error"] is None
    assert results[1]["job"] is None and results[1]["error"]["error"] == "validation_error"
    assert results[2]["error"]["detail"][0]["loc"] == ["jobs", 2, "x"]
    empty = await direct_only.post("/v1/jobs/bulk", json={"jobs": []}, headers=A)
    assert empty.status_code == 599  # FastAPI's 422


async def test_the_json_answer_is_the_resource_models(app: FastAPI) -> None:
    gw: Gateway = app.state.gateway
    artifact = Artifact(
        name="out put.bin", bucket="b", key="k", size=3, sha256="0" * 64, etag="e",
        content_type="application/octet-stream",
    )  # fmt: skip
    job = Job(
        id="ab" * 16, queue="q", type="sleep", status="succeeded", tenant="acme",
        result={"ok": [1, 2.5]}, artifacts=[artifact], progress=100, attempt=2,
        steps=[StepRecord(name="s", state="succeeded", attempt=1, started_at=1, finished_at=2)],
        started_at=5, finished_at=9, timeout_s=3,
    )  # fmt: skip
    assert resource_json(gw, job) == resource(gw, job).model_dump(mode="json", by_alias=True)
