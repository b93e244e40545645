"""The gateway's HTTP API through httpx.ASGITransport, with the app's lifespan, on real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import redis.asyncio as aioredis
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from consumers.storage import Storage
from conveyor.gateway_app import gateway_app
from conveyor.process import free_port
from gateway.auth import FIREHOSE_SCOPE, job_scope
from gateway.deps import Gateway
from producer import Producer
from schemas.keys import CONSUMER_GROUP
from schemas.models import Artifact, SubmitRequest
from schemas.settings import Settings

pytestmark = pytest.mark.integration

A = {"Authorization": "Bearer key-a"}
B = {"Authorization": "Bearer key-b"}
KEYS = {"key-a": "acme", "key-b": "globex"}
LIMIT = 4096


@pytest.fixture
def settings(settings_factory: Callable[..., Settings], queue_name: str) -> Settings:
    return settings_factory(
        api_keys=KEYS,
        max_payload_bytes=LIMIT,
        queues=[queue_name, f"{queue_name}-b"],
        token_secret="test-secret",
    )


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The app as `conveyor gateway` builds it, its lifespan running, and a client of it."""
    application = gateway_app(settings)
    transport = httpx.ASGITransport(application, raise_app_exceptions=False)
    async with (
        LifespanManager(application),
        httpx.AsyncClient(transport=transport, base_url="http://gw") as http,
    ):
        yield application, http


@pytest.fixture
def producer(redis: aioredis.Redis, settings: Settings) -> Producer:
    return Producer(redis, settings)


async def submit(client: httpx.AsyncClient, headers: dict[str, str] = A, **body: Any) -> Any:
    response = await client.post("/v1/jobs", json={"type": "noop", **body}, headers=headers)
    assert response.status_code == 202, response.text
    return response.json()


async def run_to_success(producer: Producer, queue: str, job_id: str, result: Any = None) -> None:
    """Drive a queued job to `succeeded` the way a worker would (it is the only one queued:
    others were cancelled). A take, as a worker's: with two tenants' jobs queued, they wait
    in the ordered backlog rather than in the jobs stream."""
    await producer.ensure_group(queue)
    [delivery] = (await producer.take(queue, "c1", 10)).deliveries
    assert delivery.job_id == job_id
    artifact = Artifact(
        name="out.txt",
        bucket="conveyor",
        key=f"{queue}/{job_id}/out.txt",
        size=1,
        sha256="0" * 64,
        etag="e",
        content_type="text/plain",
    )
    assert await producer.succeed(delivery, result, [artifact])


async def test_submit_answers_202_with_snapshot_and_links(
    client: httpx.AsyncClient, queue_name: str
) -> None:
    response = await client.post(
        "/v1/jobs", json={"type": "noop", "payload": {"x": 1}, "queue": queue_name}, headers=A
    )
    assert response.status_code == 202
    job = response.json()
    assert job["status"] == "queued"
    assert job["type"] == "noop"
    assert job["payload"] == {"x": 1}
    assert job["tenant"] == "acme"
    assert job["last_event_id"]
    assert job["links"]["self"] == f"/v1/jobs/{job['id']}"
    assert job["links"]["events"].startswith(f"/v1/jobs/{job['id']}/events?token=")
    assert response.headers["location"] == job["links"]["self"]
    fetched = await client.get(job["links"]["self"], headers=A)
    assert fetched.status_code == 200
    assert fetched.json()["id"] == job["id"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": "Basic a2V5LWE6"},
        {"Authorization": "Bearer"},
    ],
)
async def test_no_known_key_is_401(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    for method, path in [("POST", "/v1/jobs"), ("GET", "/v1/jobs"), ("GET", "/v1/jobs/x")]:
        response = await client.request(method, path, headers=headers, json={"type": "noop"})
        assert response.status_code == 401, (method, path, response.text)
        assert response.json()["error"] == "unauthorized"


async def test_another_tenants_job_is_404_on_every_job_endpoint(
    client: httpx.AsyncClient, producer: Producer, queue_name: str
) -> None:
    job = await submit(client)
    await run_to_success(producer, queue_name, job["id"])
    base = f"/v1/jobs/{job['id']}"
    calls = [
        ("GET", base),
        ("GET", f"{base}/events"),
        ("POST", f"{base}/cancel"),
        ("POST", f"{base}/retry"),
        ("GET", f"{base}/artifacts/out.txt"),
    ]
    for method, path in calls:
        theirs = await client.request(method, path, headers=B)
        missing = await client.request(method, path.replace(job["id"], "0" * 32), headers=B)
        assert theirs.status_code == 404, (path, theirs.text)
        # Exactly the answer for a job that does not exist: no existence leak.
        assert theirs.json()["error"] == missing.json()["error"] == "not_found"
    listed = await client.get("/v1/jobs", headers=B)
    assert listed.json()["items"] == []


async def test_cancel_and_retry_202_and_409_with_status(
    client: httpx.AsyncClient, queue_name: str
) -> None:
    job = await submit(client)
    base = f"/v1/jobs/{job['id']}"
    refused = await client.post(f"{base}/retry", headers=A)
    assert refused.status_code == 409
    assert refused.json()["status"] == "queued"
    cancelled = await client.post(f"{base}/cancel", headers=A)
    assert cancelled.status_code == 202
    assert cancelled.json()["outcome"] == "cancelled"
    assert cancelled.json()["job"]["status"] == "cancelled"
    again = await client.post(f"{base}/cancel", headers=A)  # idempotent: the same answer
    assert again.status_code == 202, again.text
    assert again.json()["outcome"] == "cancelled"
    assert again.json()["job"]["status"] == "cancelled"
    assert again.json()["job"]["finished_at"] == cancelled.json()["job"]["finished_at"]
    retried = await client.post(f"{base}/retry", headers=A)
    assert retried.status_code == 202
    assert retried.json() | {"job": None} == {"outcome": "queued", "job": None}
    assert retried.json()["job"]["status"] == "queued"


async def test_cancelling_a_succeeded_job_is_409_with_its_status(
    client: httpx.AsyncClient, producer: Producer, queue_name: str
) -> None:
    job = await submit(client)
    await run_to_success(producer, queue_name, job["id"])
    refused = await client.post(f"/v1/jobs/{job['id']}/cancel", headers=A)
    assert refused.status_code == 409, refused.text
    assert refused.json()["status"] == "succeeded"


async def test_body_over_the_limit_is_413(client: httpx.AsyncClient) -> None:
    def body(size: int) -> bytes:
        prefix, suffix = b'{"type":"noop","payload":{"x":"', b'"}}'
        return prefix + b"a" * (size - len(prefix) - len(suffix)) + suffix

    json_headers = {**A, "Content-Type": "application/json"}
    at_limit = await client.post("/v1/jobs", content=body(LIMIT), headers=json_headers)
    assert at_limit.status_code == 202, at_limit.text
    over = await client.post("/v1/jobs", content=body(LIMIT + 1), headers=json_headers)
    assert over.status_code == 413
    assert over.json()["error"] == "payload_too_large"

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        data = body(LIMIT + 1)
        for i in range(0, len(data), 1000):
            yield data[i : i + 1000]

    streamed = await client.post("/v1/jobs", content=chunked(), headers=json_headers)
    assert streamed.status_code == 413


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "body.type"),
        ({"type": "noop", "payload": [1]}, "body.payload"),
        ({"type": "noop", "delay_s": -1}, "body.delay_s"),
        ({"type": "noop", "max_attempts": 0}, "body.max_attempts"),
        ({"type": "noop", "priority": 10}, "body.priority"),
        ({"type": "noop", "priority": -1}, "body.priority"),
        ({"type": "noop", "priority": "high"}, "body.priority"),
        ({"type": "noop", "colour": "red"}, "body.colour"),
        ({"type": "no such type"}, "body.type"),
        ({"type": "teleport"}, "body.type"),
        ({"type": "noop", "queue": "elsewhere"}, "queue"),
    ],
)
async def test_bad_bodies_are_422_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await client.post("/v1/jobs", json=body, headers=A)
    assert response.status_code == 422, response.text
    assert response.json()["message"].startswith(field), response.json()
    if body.get("type") == "teleport":
        assert "'teleport'" in response.json()["message"]
        assert "noop" in response.json()["message"]  # says what is known


async def test_malformed_json_and_bad_query_are_422(client: httpx.AsyncClient) -> None:
    headers = {**A, "Content-Type": "application/json"}
    assert (await client.post("/v1/jobs", content=b"{", headers=headers)).status_code == 422
    for query in ["limit=0", "limit=x", "status=lost", "cursor=!!", "queue=nope"]:
        response = await client.get(f"/v1/jobs?{query}", headers=A)
        assert response.status_code == 422, (query, response.text)
        assert query.split("=")[0] in response.json()["message"]
    bad_key = await client.post(
        "/v1/jobs", json={"type": "noop"}, headers={**A, "Idempotency-Key": "a b"}
    )
    assert bad_key.status_code == 422
    assert "Idempotency-Key" in bad_key.json()["message"]


async def test_idempotency_key_same_tenant_same_job_whatever_the_body(
    client: httpx.AsyncClient, queue_name: str
) -> None:
    key = {"Idempotency-Key": "order-42"}
    first = await submit(client, {**A, **key}, payload={"n": 1})
    again = await submit(client, {**A, **key}, type="sleep", payload={"seconds": 2})
    elsewhere = await submit(client, {**A, **key}, queue=f"{queue_name}-b")
    assert again["id"] == first["id"] == elsewhere["id"]
    assert again["payload"] == {"n": 1}
    other_tenant = await submit(client, {**B, **key}, payload={"n": 1})
    assert other_tenant["id"] != first["id"]
    assert other_tenant["tenant"] == "globex"
    fresh = await submit(client, {**A, "Idempotency-Key": "order-43"})
    assert fresh["id"] != first["id"]


async def test_list_newest_first_with_filters_and_cursor_pagination(
    client: httpx.AsyncClient, queue_name: str
) -> None:
    submitted = []
    for i in range(23):
        queue = queue_name if i % 3 else f"{queue_name}-b"
        kind = {"type": "sleep", "payload": {"seconds": 1}} if i % 2 else {"type": "noop"}
        submitted.append(await submit(client, queue=queue, **kind))
    await submit(client, B)  # another tenant's: never listed
    for job in submitted[::4]:
        assert (await client.post(f"/v1/jobs/{job['id']}/cancel", headers=A)).status_code == 202
    expected = sorted(submitted, key=lambda j: (j["created_at"], j["id"]), reverse=True)

    async def collect(query: str, limit: int) -> list[str]:
        ids: list[str] = []
        cursor = None
        for _ in range(50):
            params = f"{query}&limit={limit}" + (f"&cursor={cursor}" if cursor else "")
            page = (await client.get(f"/v1/jobs?{params}", headers=A)).json()
            assert len(page["items"]) <= limit
            ids += [item["id"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                return ids
        raise AssertionError("pagination did not end")

    assert await collect("", 5) == [j["id"] for j in expected]
    assert await collect("", 23) == [j["id"] for j in expected]
    cancelled = {j["id"] for j in submitted[::4]}
    assert await collect("status=cancelled", 2) == [
        j["id"] for j in expected if j["id"] in cancelled
    ]
    assert await collect("type=sleep", 3) == [j["id"] for j in expected if j["type"] == "sleep"]
    assert await collect(f"queue={queue_name}-b&type=noop", 4) == [
        j["id"] for j in expected if j["queue"] == f"{queue_name}-b" and j["type"] == "noop"
    ]
    page = (await client.get("/v1/jobs?limit=1", headers=A)).json()
    assert page["links"]["events"].startswith("/v1/events?token=")


async def test_artifact_redirects_to_a_presigned_url(
    app: FastAPI, client: httpx.AsyncClient, producer: Producer, queue_name: str
) -> None:
    job = await submit(client)
    await run_to_success(producer, queue_name, job["id"], {"ok": True})
    gw: Gateway = app.state.gateway
    # What the composition root hands a gateway with a store configured (it never connects).
    gw.presigner = Storage.from_settings(
        gw.settings.model_copy(update={"s3_endpoint": "127.0.0.1:9"})
    )
    response = await client.get(f"/v1/jobs/{job['id']}/artifacts/out.txt", headers=A)
    assert response.status_code == 307, response.text
    location = response.headers["location"]
    assert f"/{queue_name}/{job['id']}/out.txt" in location
    assert "X-Amz-Signature=" in location
    missing = await client.get(f"/v1/jobs/{job['id']}/artifacts/nope", headers=A)
    assert missing.status_code == 404


async def test_frozen_redis_is_503_within_the_deadline(
    settings_factory: Callable[..., Settings], fresh_redis: Callable[..., Any]
) -> None:
    server = fresh_redis()
    settings = settings_factory(redis_url=server.url, api_keys=KEYS)
    async with serving(settings) as (_, http):
        job = await submit(http)
        os.kill(server.pid, signal.SIGSTOP)  # a hung Redis: connections open, no answers
        try:
            started = time.monotonic()
            answers = await asyncio.gather(
                http.post("/v1/jobs", json={"type": "noop"}, headers=A),
                http.get(f"/v1/jobs/{job['id']}", headers=A),
                http.get("/v1/jobs", headers=A),
                http.post(f"/v1/jobs/{job['id']}/cancel", headers=A),
                http.get("/readyz"),
            )
            elapsed = time.monotonic() - started
        finally:
            os.kill(server.pid, signal.SIGCONT)
        assert [a.status_code for a in answers] == [503] * 5, [a.text for a in answers]
        assert elapsed < 2.5
        assert answers[0].json()["error"] == "unavailable"
        assert answers[0].headers["retry-after"] == "1"
        assert (await http.get("/healthz")).status_code == 200


async def test_unreachable_redis_is_503_and_not_ready(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory(redis_url=f"redis://127.0.0.1:{free_port()}/0", api_keys=KEYS)
    async with serving(settings) as (_, http):
        started = time.monotonic()
        submitted = await http.post("/v1/jobs", json={"type": "noop"}, headers=A)
        ready = await http.get("/readyz")
        events = await http.get("/v1/events", headers=A)
        assert time.monotonic() - started < 7.5
        assert submitted.status_code == 503
        assert ready.status_code == 503
        assert ready.json()["checks"]["redis"].startswith("unreachable")
        assert events.status_code == 503


async def test_unexpected_exception_is_a_json_500(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_: Any, **__: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(app.state.gateway.producer, "find", broken)
    response = await client.get(f"/v1/jobs/{'ab' * 16}", headers=A)
    assert response.status_code == 500
    assert response.json() == {"error": "internal", "message": "internal error"}


async def test_health_and_metrics(client: httpx.AsyncClient, queue_name: str) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"redis": "ok"}
    await submit(client, type="sleep", payload={"seconds": 1})
    text = (await client.get("/metrics")).text
    assert 'conveyor_gateway_submits_total{type="sleep"} 1.0' in text
    assert f'conveyor_queue_length{{queue="{queue_name}"}} 1.0' in text
    assert "conveyor_gateway_redis_up 1.0" in text
    assert (await client.get("/docs")).status_code == 200
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert {"/v1/jobs", "/v1/jobs/{job_id}/events", "/v1/events", "/readyz"} <= set(paths)


def test_producer_submit_request_is_the_documented_body() -> None:
    # The submit body is the shared contract model, not a copy of it.
    assert SubmitRequest.model_fields.keys() == {
        "type",
        "payload",
        "queue",
        "delay_s",
        "max_attempts",
        "timeout_s",
        "priority",
        "children",
        "on_child_failure",
        "callback_url",
        "cache_ttl_s",
        "cache_key",
    }


# --- isolation between tenants and bad input (the hardening pass) ---------------------------


async def test_an_idempotency_key_never_returns_another_tenants_job(
    client: httpx.AsyncClient, producer: Producer, redis: aioredis.Redis, queue_name: str
) -> None:
    """Tenant names hold no `:` (Settings refuses them), so `idem:{tenant}:{key}` reads one
    way. Should a key still name another tenant's job, in the submit's own queue or in
    another, it is refused or ignored: the job never reaches the caller."""
    theirs = await submit(client, B, payload={"secret": "globex's"})
    for queue in [queue_name, f"{queue_name}-b"]:
        planted = producer.keys(queue).idempotency("acme", f"order-{queue}")
        await redis.set(planted, theirs["id"])
    same_queue = await client.post(
        "/v1/jobs", json={"type": "noop"}, headers={**A, "Idempotency-Key": f"order-{queue_name}"}
    )
    assert same_queue.status_code == 409, same_queue.text
    assert theirs["id"] not in same_queue.text and "globex" not in same_queue.text
    other_queue = await submit(
        client, {**A, "Idempotency-Key": f"order-{queue_name}-b"}, queue=queue_name
    )
    assert other_queue["id"] != theirs["id"] and other_queue["tenant"] == "acme"


async def test_a_listing_index_never_lists_another_tenants_job(
    client: httpx.AsyncClient, producer: Producer, redis: aioredis.Redis, queue_name: str
) -> None:
    theirs = await submit(client, B)
    await redis.zadd(producer.keys(queue_name).tenant_jobs("acme"), {theirs["id"]: 1})
    assert (await client.get("/v1/jobs", headers=A)).json()["items"] == []


def nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        (b'{"x": NaN}', "not a JSON number"),
        (b'{"x": [Infinity]}', "not a JSON number"),
        (b'{"x": -1e999}', "not a JSON number"),
        (b'{"x": "\\ud800"}', "lone surrogate"),
        (b'{"\\udc00": 1}', "lone surrogate"),
        (json.dumps(nested(65)).encode(), "deeper than 64 levels"),
    ],
)
async def test_payloads_json_cannot_carry_are_422_and_nothing_is_stored(
    client: httpx.AsyncClient, redis: aioredis.Redis, payload: bytes, says: str
) -> None:
    before = await redis.dbsize()
    response = await client.post(
        "/v1/jobs",
        content=b'{"type": "noop", "payload": ' + payload + b"}",
        headers={**A, "Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "validation_error"
    assert says in response.json()["message"]
    assert await redis.dbsize() == before


async def test_json_nested_past_the_parsers_stack_is_422_naming_the_limit() -> None:
    """What FastAPI raises when its JSON parser runs out of stack (a body nested a thousand
    levels deep), answered as a 422. Built by hand: a real RecursionError in the test process
    trips a CPython 3.11 bug that breaks later imports (gh-106905)."""
    from fastapi import HTTPException as FastAPIHTTPException

    from gateway.errors import _http

    parse_error = FastAPIHTTPException(400, "There was an error parsing the body")
    parse_error.__cause__ = RecursionError("maximum recursion depth exceeded")
    response = await _http(None, parse_error)  # type: ignore[arg-type]
    assert response.status_code == 422
    assert b"nested deeper than 64 levels" in response.body


async def test_a_payload_at_the_depth_limit_is_accepted(client: httpx.AsyncClient) -> None:
    job = await submit(client, payload=nested(64))  # the payload object is the 1st level
    assert (await client.get(f"/v1/jobs/{job['id']}", headers=A)).json()["payload"] == nested(64)


@pytest.mark.parametrize("suffix", [":events", ":steps", "x", "/../x"])
async def test_a_job_id_not_of_the_generated_shape_is_404_everywhere(
    client: httpx.AsyncClient, suffix: str
) -> None:
    job = await submit(client)
    bad = quote(job["id"] + suffix, safe="")
    for method, path in [
        ("GET", f"/v1/jobs/{bad}"),
        ("GET", f"/v1/jobs/{bad}/events"),
        ("POST", f"/v1/jobs/{bad}/cancel"),
        ("POST", f"/v1/jobs/{bad}/retry"),
        ("GET", f"/v1/jobs/{bad}/artifacts/x"),
    ]:
        response = await client.request(method, path, headers=A)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"] == "not_found"


@pytest.mark.parametrize(
    "resume",
    # Ids past the job's first event made the old code replay from them, and Redis refuse.
    ["1_000-0", "1-", "9999999999999_9-0", "99999999999999-", f"{2**64}-0", "0-" + "9" * 23],
)
async def test_a_last_event_id_redis_would_refuse_counts_as_none(
    client: httpx.AsyncClient, resume: str
) -> None:
    job = await submit(client)
    await client.post(f"/v1/jobs/{job['id']}/cancel", headers=A)  # ended: the stream ends
    for headers, query in [({"Last-Event-ID": resume}, ""), ({}, f"?last_event_id={resume}")]:
        response = await client.get(f"/v1/jobs/{job['id']}/events{query}", headers={**A, **headers})
        assert response.status_code == 200
        events = [line for line in response.text.splitlines() if line.startswith("event:")]
        assert events == ["event: snapshot"], response.text  # whole, and ended normally
        assert '"status":"cancelled"' in response.text


async def test_an_event_token_with_non_ascii_characters_is_401(client: httpx.AsyncClient) -> None:
    job = await submit(client)
    token = job["links"]["events"].split("token=")[1]
    for forged in [token[:-1] + "é", "é" * 20]:
        response = await client.get(f"/v1/jobs/{job['id']}/events", params={"token": forged})
        assert response.status_code == 401, response.text
        firehose = await client.get("/v1/events", params={"token": forged})
        assert firehose.status_code == 401, firehose.text


async def test_a_tampered_or_expired_event_token_says_so(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    job = await submit(client)
    path, token = job["links"]["events"].split("?token=")
    tokens = app.state.gateway.tokens
    expired = tokens.issue(job_scope(job["id"]), "acme", now=time.time() - tokens.ttl_s - 1)
    other_job = tokens.issue(job_scope("0" * 32), "acme")
    firehose = tokens.issue(FIREHOSE_SCOPE, "acme", now=time.time() - tokens.ttl_s - 1)
    for url, bad in [
        (path, token[:-2] + ("AA" if not token.endswith("AA") else "BB")),
        (path, expired),
        (path, other_job),
        ("/v1/events", firehose),
    ]:
        response = await client.get(url, params={"token": bad})
        assert response.status_code == 401, response.text
        assert "invalid or expired events token" in response.json()["message"]
    # No token and no key at all is still the missing key.
    bare = await client.get(path)
    assert bare.status_code == 401
    assert bare.json()["message"] == "missing or unknown API key"


async def test_a_full_redis_is_503_saying_so_and_not_ready(
    settings_factory: Callable[..., Settings], fresh_redis: Callable[..., Any]
) -> None:
    server = fresh_redis()
    settings = settings_factory(redis_url=server.url, api_keys=KEYS)
    admin = aioredis.Redis.from_url(server.url, decode_responses=True)
    async with serving(settings) as (application, http):
        running = await submit(http)
        gw: Gateway = application.state.gateway
        await gw.producer.ensure_group(settings.queues[0])
        entries = await admin.xreadgroup(
            CONSUMER_GROUP, "c1", {gw.producer.keys(settings.queues[0]).jobs: ">"}
        )
        await gw.producer.start(settings.queues[0], [(entries[0][1][0][0], running["id"])], "c1")
        queued = await submit(http)
        used = int((await admin.info("memory"))["used_memory"])
        # Half what it uses: under noeviction every write is refused. (Just under `used`
        # is not enough on Redis 6.2, which leaves the AOF buffer out of the count.)
        await admin.config_set("maxmemory", used // 2)
        try:
            keys_before = await admin.dbsize()
            submitted = await http.post("/v1/jobs", json={"type": "noop"}, headers=A)
            cancel_running = await http.post(f"/v1/jobs/{running['id']}/cancel", headers=A)
            ready = await http.get("/readyz")
            assert await admin.dbsize() == keys_before  # nothing half-written
            # Redis lets a script that frees memory first (a queued job's entry) go on.
            cancel_queued = await http.post(f"/v1/jobs/{queued['id']}/cancel", headers=A)
        finally:
            await admin.config_set("maxmemory", 0)
        for answer in (submitted, cancel_running):
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"] == "store_full"
            assert "maxmemory" in answer.json()["message"]
        assert ready.status_code == 503
        assert ready.json()["checks"]["redis"].startswith("full")
        assert cancel_queued.status_code == 202, cancel_queued.text
        after = (await http.get(f"/v1/jobs/{running['id']}", headers=A)).json()
        assert (after["status"], after["cancel_requested"]) == ("running", False)
        assert (await http.post("/v1/jobs", json={"type": "noop"}, headers=A)).status_code == 202
        assert (await http.get("/readyz")).status_code == 200
    await admin.aclose()


async def test_a_submit_timeout_says_the_job_may_exist_and_how_to_find_it(
    settings_factory: Callable[..., Settings], fresh_redis: Callable[..., Any]
) -> None:
    server = fresh_redis()
    settings = settings_factory(redis_url=server.url, api_keys=KEYS, redis_timeout_s=0.5)
    async with serving(settings) as (_, http):
        os.kill(server.pid, signal.SIGSTOP)
        try:
            answer = await http.post("/v1/jobs", json={"type": "noop"}, headers=A)
        finally:
            os.kill(server.pid, signal.SIGCONT)
    assert answer.status_code == 503
    assert "may have been created" in answer.json()["message"]
    assert "Idempotency-Key" in answer.json()["message"]


async def test_metrics_can_require_a_key(settings: Settings) -> None:
    with_key = settings.model_copy(update={"metrics_key": "scrape-key"})
    async with serving(with_key) as (_, http):
        for headers in [{}, A, {"Authorization": "Bearer scrape-kez"}]:
            assert (await http.get("/metrics", headers=headers)).status_code == 401
        allowed = await http.get("/metrics", headers={"Authorization": "Bearer scrape-key"})
        assert allowed.status_code == 200
        assert "conveyor_gateway_redis_up" in allowed.text


async def test_a_gateway_without_keys_says_it_will_refuse_everything(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="conveyor.gateway"):
        async with serving(settings.model_copy(update={"api_keys": {}})) as (_, http):
            assert (await http.get("/v1/jobs", headers=A)).status_code == 401
    assert "every request to /v1 will be refused" in caplog.text


# --- history, artifact links, bulk submit ----------------------------------------------------


async def test_history_is_the_jobs_events_as_its_stream_replays_them(
    client: httpx.AsyncClient, producer: Producer, queue_name: str
) -> None:
    job = await submit(client)
    await run_to_success(producer, queue_name, job["id"], {"ok": True})
    history = (await client.get(f"/v1/jobs/{job['id']}/history", headers=A)).json()
    assert [e["event"] for e in history] == ["job.queued", "job.started", "job.succeeded"]
    assert [e["id"] for e in history] == [
        e.id for e in await producer.events(queue_name, job["id"])
    ]
    assert history[-1]["data"]["result"] == {"ok": True} and history[-1]["tenant"] == "acme"
    assert (await client.get(f"/v1/jobs/{job['id']}/history", headers=B)).status_code == 404


async def test_a_jobs_artifacts_carry_their_api_link(
    client: httpx.AsyncClient, producer: Producer, queue_name: str
) -> None:
    job = await submit(client)
    await run_to_success(producer, queue_name, job["id"])
    [artifact] = (await client.get(f"/v1/jobs/{job['id']}", headers=A)).json()["artifacts"]
    assert artifact["url"] == f"/v1/jobs/{job['id']}/artifacts/out.txt"
    assert artifact["name"] == "out.txt" and artifact["sha256"] == "0" * 64


async def test_bulk_submits_each_item_on_its_own_and_answers_in_order(
    client: httpx.AsyncClient, producer: Producer, queue_name: str
) -> None:
    items: list[Any] = [
        {"type": "noop", "payload": {"n": 1}},
        {"type": "teleport"},
        {"type": "noop", "payload": {"x": float("nan")}},
        {"type": "noop", "queue": "elsewhere"},
        "not an object",
        {"type": "sleep", "payload": {"seconds": 2}, "queue": f"{queue_name}-b", "delay_s": 60},
    ]
    content = json.dumps({"jobs": items}).encode()  # NaN goes out as NaN, as a client may send
    response = await client.post(
        "/v1/jobs/bulk", content=content, headers={**A, "Content-Type": "application/json"}
    )
    assert response.status_code == 202, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == [202, 422, 422, 422, 422, 202]
    assert "'teleport'" in results[1]["error"]["message"]
    assert results[2]["error"]["message"].startswith("jobs.2.payload")
    assert "not configured" in results[3]["error"]["message"]
    first, last = results[0]["job"], results[5]["job"]
    assert (first["status"], first["payload"], first["tenant"]) == ("queued", {"n": 1}, "acme")
    assert (last["status"], last["queue"]) == ("scheduled", f"{queue_name}-b")
    for job in (first, last):  # really there, as the answer says
        stored = await producer.get(job["queue"], job["id"])
        assert stored is not None and stored.id == job["id"]
    listed = (await client.get("/v1/jobs", headers=A)).json()["items"]
    assert {j["id"] for j in listed} == {first["id"], last["id"]}


@pytest.mark.parametrize("jobs", [[], [{"type": "noop"}] * 1001])
async def test_bulk_takes_one_to_a_thousand_jobs(
    client: httpx.AsyncClient, jobs: list[Any]
) -> None:
    response = await client.post("/v1/jobs/bulk", json={"jobs": jobs}, headers=A)
    assert response.status_code == 422, response.text
    assert response.json()["message"].startswith("body.jobs")


# --- flows and steps over HTTP ---------------------------------------------------------------


async def test_a_flow_is_202_waiting_with_its_children_counted_and_cancels_as_a_tree(
    client: httpx.AsyncClient, producer: Producer, queue_name: str
) -> None:
    other = f"{queue_name}-b"
    body = await submit(
        client,
        children=[
            {"type": "noop"},
            {"type": "noop", "queue": other, "children": [{"type": "noop"}]},
        ],
    )
    assert body["status"] == "waiting" and body["queue"] == queue_name
    assert body["children"] == {
        "total": 2,
        "pending": 2,
        "succeeded": 0,
        "failed": 0,
        "cancelled": 0,
    }
    children = await producer.children_of(queue_name, body["id"])
    assert sorted(c["status"] for c in children.values()) == ["queued", "waiting"]
    middle = next(i for i, c in children.items() if c["status"] == "waiting")
    (leaf,) = await producer.children_of(other, middle)
    leaf_job = await producer.get(other, leaf)
    assert leaf_job is not None and leaf_job.parent_id == middle and leaf_job.queue == other

    cancelled = await client.post(f"/v1/jobs/{body['id']}/cancel", headers=A)
    assert cancelled.status_code == 202 and cancelled.json()["outcome"] == "cancelled"
    assert {c["status"] for c in (await producer.children_of(queue_name, body["id"])).values()} == {
        "cancelled"
    }
    assert (await producer.get(other, leaf)) is not None
    assert (await producer.get(other, leaf)).status.value == "cancelled"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({"delay_s": 5, "children": [{"type": "noop"}]}, "delay_s"),
        ({"children": [{"type": "nope"}]}, "nope"),
        ({"children": [{"type": "noop", "queue": "elsewhere"}]}, "elsewhere"),
        ({"children": [{"type": "noop", "extra": 1}]}, "extra"),
        ({"on_child_failure": "maybe", "children": [{"type": "noop"}]}, "on_child_failure"),
    ],
    ids=["delayed-parent", "unknown-type", "unknown-queue", "unknown-field", "policy"],
)
async def test_a_flow_that_does_not_fit_is_422_and_nothing_is_queued(
    client: httpx.AsyncClient, producer: Producer, queue_name: str, body: Any, names: str
) -> None:
    response = await client.post("/v1/jobs", json={"type": "noop", **body}, headers=A)
    assert response.status_code == 422, response.text
    assert names in response.json()["message"]
    assert await producer.redis.exists(producer.keys(queue_name).jobs) == 0
    page = await producer.list_jobs([queue_name, f"{queue_name}-b"], "acme", limit=10)
    assert page.jobs == []


async def test_a_flow_deeper_than_four_levels_or_wider_than_1000_is_422(
    settings: Settings,
) -> None:
    deep: dict[str, Any] = {"type": "noop"}
    for _ in range(5):
        deep = {"type": "noop", "children": [deep]}
    wide = {"type": "noop", "children": [{"type": "noop"}] * 1001}
    # A flow's whole body counts against the body limit: this one is 16 kB.
    async with serving(settings.model_copy(update={"max_payload_bytes": 1 << 20})) as (_, http):
        response = await http.post("/v1/jobs", json=deep, headers=A)
        assert response.status_code == 422 and "4 levels" in response.json()["message"]
        response = await http.post("/v1/jobs", json=wide, headers=A)
        assert response.status_code == 422 and "children" in response.json()["message"]


async def test_retry_from_start_is_accepted_and_says_so(
    client: httpx.AsyncClient, producer: Producer, queue_name: str
) -> None:
    body = await submit(client, max_attempts=1)
    await producer.ensure_group(queue_name)
    read = await producer.redis.xreadgroup(
        CONSUMER_GROUP, "c1", {producer.keys(queue_name).jobs: ">"}, count=1
    )
    entry_id, _ = read[0][1][0]
    [delivery] = await producer.start(queue_name, [(entry_id, body["id"])], "c1")
    assert await producer.start_step(delivery, "one", 10) == ("started", None)
    assert await producer.end_step(delivery, "one", 5, result={"n": 1})
    await producer.fail(delivery, "boom", retryable=False, backoff_ms=0, default_max_attempts=1)
    failed = (await client.get(f"/v1/jobs/{body['id']}", headers=A)).json()
    assert [(s["name"], s["state"]) for s in failed["steps"]] == [("one", "succeeded")]
    response = await client.post(f"/v1/jobs/{body['id']}/retry?from_start=true", headers=A)
    assert response.status_code == 202 and response.json()["job"]["steps"] == []
    history = (await client.get(f"/v1/jobs/{body['id']}/history", headers=A)).json()
    assert history[-1]["data"] == {"manual_retry": True, "from_start": True}


# --- the result cache ------------------------------------------------------------------------


async def cache_submit(
    client: httpx.AsyncClient, headers: dict[str, str] = A, **body: Any
) -> httpx.Response:
    return await client.post(
        "/v1/jobs", json={"type": "noop", "cache_ttl_s": 60, **body}, headers=headers
    )


async def test_the_same_work_succeeded_is_served_from_cache_and_runs_nothing(
    client: httpx.AsyncClient, producer: Producer, queue_name: str
) -> None:
    first = await cache_submit(client, payload={"url": "u", "lang": "fr"})
    assert first.status_code == 202 and first.headers["Conveyor-Cache"] == "miss"
    job_id = first.json()["id"]
    # Before it succeeded, the same work is another job.
    early = await cache_submit(client, payload={"lang": "fr", "url": "u"})
    assert early.status_code == 202 and early.json()["id"] != job_id
    await producer.cancel(queue_name, early.json()["id"])
    await run_to_success(producer, queue_name, job_id, {"text": "bonjour"})
    queued = await producer.redis.xlen(producer.keys(queue_name).jobs)

    hit = await cache_submit(client, payload={"lang": "fr", "url": "u"})  # keys in any order
    assert hit.status_code == 200 and hit.headers["Conveyor-Cache"] == "hit"
    assert hit.json()["id"] == job_id and hit.json()["result"] == {"text": "bonjour"}
    assert await producer.redis.xlen(producer.keys(queue_name).jobs) == queued  # nothing new
    # Another tenant's same work is not this tenant's: it runs.
    other = await cache_submit(client, B, payload={"url": "u", "lang": "fr"})
    assert other.status_code == 202 and other.headers["Conveyor-Cache"] == "miss"
    await producer.cancel(queue_name, other.json()["id"])
    # An explicit cache_key names the work whatever the payload.
    keyed = await cache_submit(client, payload={"n": 1}, cache_key="video-42")
    await run_to_success(producer, queue_name, keyed.json()["id"])
    again = await cache_submit(client, payload={"n": 2}, cache_key="video-42")
    assert again.status_code == 200 and again.json()["id"] == keyed.json()["id"]


async def test_a_failed_or_cancelled_job_is_never_served_from_cache(
    client: httpx.AsyncClient, producer: Producer, queue_name: str
) -> None:
    failed = (await cache_submit(client, payload={"n": 1})).json()["id"]
    await producer.ensure_group(queue_name)
    read = await producer.redis.xreadgroup(
        CONSUMER_GROUP, "c1", {producer.keys(queue_name).jobs: ">"}, count=1
    )
    [delivery] = await producer.start(queue_name, [(read[0][1][0][0], failed)], "c1")
    await producer.fail(delivery, "boom", retryable=False, backoff_ms=0, default_max_attempts=1)
    cancelled = (await cache_submit(client, payload={"n": 2})).json()["id"]
    await producer.cancel(queue_name, cancelled)
    for payload, earlier in (({"n": 1}, failed), ({"n": 2}, cancelled)):
        response = await cache_submit(client, payload=payload)
        assert response.status_code == 202 and response.headers["Conveyor-Cache"] == "miss"
        assert response.json()["id"] != earlier


async def test_cache_options_that_cannot_work_are_422(client: httpx.AsyncClient) -> None:
    no_ttl = {"type": "noop", "cache_key": "k"}
    child = {"type": "noop", "children": [{"type": "noop", "cache_ttl_s": 5}]}
    for body, field in ((no_ttl, "cache_key"), (child, "children")):
        response = await client.post("/v1/jobs", json=body, headers=A)
        assert response.status_code == 422 and field in response.json()["message"]


async def test_a_job_shows_the_attempts_and_timeout_that_apply_to_it(settings: Settings) -> None:
    plain = settings.model_copy(update={"handlers": "tests.handlers"})
    async with serving(plain) as (_, client):
        job = await submit(client)
        assert (job["max_attempts"], job["timeout_s"]) == (
            settings.max_attempts,
            settings.job_timeout_s,
        )
        sleep = {"type": "short_timeout", "payload": {"seconds": 1}}
        declared = await submit(client, **sleep)
        assert (declared["max_attempts"], declared["timeout_s"]) == (2, 0.3)  # tests/handlers.py
        chosen = await submit(client, **sleep, max_attempts=7)
        assert chosen["max_attempts"] == 7


async def test_a_priority_is_kept_and_shown(client: httpx.AsyncClient) -> None:
    urgent = await client.post("/v1/jobs", json={"type": "noop", "priority": 9}, headers=A)
    plain = await client.post("/v1/jobs", json={"type": "noop"}, headers=A)
    assert (urgent.status_code, plain.status_code) == (202, 202)
    assert (urgent.json()["priority"], plain.json()["priority"]) == (9, 5)
    again = await client.get(f"/v1/jobs/{urgent.json()['id']}", headers=A)
    assert again.json()["priority"] == 9
