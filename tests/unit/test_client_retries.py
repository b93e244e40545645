"""What the client retries, and how long it waits: against stub transports, no gateway."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from conveyor.client import (
    AsyncClient,
    Client,
    NetworkError,
    RateLimited,
    Retries,
    Unavailable,
)

FAST = Retries(attempts=4, backoff_s=0.001, max_backoff_s=0.01)
JOB = {"id": "a" * 32, "queue": "default", "type": "noop", "status": "queued", "links": {}}


def answers(
    *responses: httpx.Response | Exception,
) -> tuple[Callable[..., httpx.Response], list[httpx.Request]]:
    """A transport handler giving `responses` in turn, and the requests it was sent."""
    seen: list[httpx.Request] = []
    pending = list(responses)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = pending.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return handle, seen


def unavailable(retry_after: str | None = "0") -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    body = {"error": "unavailable", "message": "redis did not answer within 2s"}
    return httpx.Response(503, json=body, headers=headers)


def test_backoff_doubles_up_to_its_cap_with_jitter() -> None:
    retries = Retries(attempts=10, backoff_s=1.0, max_backoff_s=5.0)
    for failures, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (9, 5.0)]:
        delays = [retries.delay(failures) for _ in range(50)]
        assert all(d is not None and ceiling / 2 <= d <= ceiling for d in delays), delays
    assert retries.delay(10) is None  # ten tries in all


def test_retry_after_is_waited_instead_unless_longer_than_the_cap() -> None:
    retries = Retries(attempts=5, backoff_s=1.0, max_backoff_s=5.0)
    assert retries.delay(1, retry_after=3.0) == 3.0
    assert retries.delay(1, retry_after=0.0) == 0.0
    assert retries.delay(1, retry_after=60.0) is None


def test_a_read_is_retried_on_503_and_429_until_it_succeeds() -> None:
    handle, seen = answers(
        unavailable(),
        httpx.Response(429, headers={"Retry-After": "0"}),
        httpx.Response(200, json=JOB),
    )
    with Client("http://gw", "k", transport=httpx.MockTransport(handle), retries=FAST) as client:
        assert client.get(JOB["id"]).id == JOB["id"]
    assert [r.url.path for r in seen] == [f"/v1/jobs/{JOB['id']}"] * 3
    assert all(r.headers["Authorization"] == "Bearer k" for r in seen)


def test_a_read_gives_up_after_its_attempts_with_the_last_answer() -> None:
    handle, seen = answers(*[unavailable(None) for _ in range(4)])
    with (
        Client("http://gw", "k", transport=httpx.MockTransport(handle), retries=FAST) as client,
        pytest.raises(Unavailable) as raised,
    ):
        client.get(JOB["id"])
    assert len(seen) == 4
    assert raised.value.status_code == 503
    assert raised.value.message == "redis did not answer within 2s"


def test_a_submit_without_a_key_is_not_sent_twice_once_it_may_have_arrived() -> None:
    handle, seen = answers(unavailable())
    with (
        Client("http://gw", "k", transport=httpx.MockTransport(handle), retries=FAST) as client,
        pytest.raises(Unavailable),
    ):
        client.submit("noop", {"x": 1})
    assert len(seen) == 1
    handle, seen = answers(httpx.ReadError("reset"))
    with (
        Client("http://gw", "k", transport=httpx.MockTransport(handle), retries=FAST) as client,
        pytest.raises(NetworkError),
    ):
        client.submit("noop")
    assert len(seen) == 1


def test_a_submit_without_a_key_is_retried_when_it_never_left() -> None:
    handle, seen = answers(httpx.ConnectError("refused"), httpx.Response(202, json=JOB))
    with Client("http://gw", "k", transport=httpx.MockTransport(handle), retries=FAST) as client:
        assert client.submit("noop").id == JOB["id"]
    assert len(seen) == 2


def test_a_submit_with_a_key_is_retried_with_the_same_key_and_body() -> None:
    handle, seen = answers(unavailable(), httpx.ReadError("reset"), httpx.Response(202, json=JOB))
    with Client("http://gw", "k", transport=httpx.MockTransport(handle), retries=FAST) as client:
        job = client.submit("noop", {"x": 1}, idempotency_key="order-7", delay_s=5, priority=9)
    assert job.id == JOB["id"]
    assert len(seen) == 3
    body = {"type": "noop", "payload": {"x": 1}, "delay_s": 5, "priority": 9}
    for request in seen:
        assert request.headers["Idempotency-Key"] == "order-7"
        assert json.loads(request.content) == body


def test_a_retry_after_past_the_cap_is_raised_not_waited_out() -> None:
    quota = {"error": "rate_limited", "message": "tenant acme has 100 unfinished jobs"}
    handle, seen = answers(httpx.Response(429, json=quota, headers={"Retry-After": "60"}))
    with (
        Client("http://gw", "k", transport=httpx.MockTransport(handle), retries=FAST) as client,
        pytest.raises(RateLimited) as raised,
    ):
        client.list()
    assert len(seen) == 1
    assert raised.value.retry_after == 60
    assert raised.value.message == quota["message"]


async def test_the_async_client_retries_the_same_way() -> None:
    handle, seen = answers(
        unavailable(), httpx.ConnectError("refused"), httpx.Response(200, json=JOB)
    )
    transport = httpx.MockTransport(handle)
    async with AsyncClient("http://gw", "k", transport=transport, retries=FAST) as client:
        assert (await client.get(JOB["id"])).id == JOB["id"]
    assert len(seen) == 3
    handle, seen = answers(unavailable())
    async with AsyncClient("http://gw", "k", transport=httpx.MockTransport(handle)) as client:
        with pytest.raises(Unavailable):
            await client.submit("noop")
    assert len(seen) == 1
