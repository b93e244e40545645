"""What each client call sends: paths, queries, bodies, headers (a stub transport)."""

from __future__ import annotations

import json

import httpx
import pytest

from conveyor.client import Client, Retries, Unavailable

JOB = {"id": "a" * 32, "queue": "default", "type": "noop", "status": "queued"}


@pytest.fixture
def sent() -> list[httpx.Request]:
    return []


@pytest.fixture
def client(sent: list[httpx.Request]) -> Client:
    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if request.url.path.endswith(("/cancel", "/retry")):
            return httpx.Response(202, json={"outcome": "queued", "job": JOB})
        if request.url.path.endswith("/v1/jobs") and request.method == "GET":
            return httpx.Response(200, json={"items": [JOB], "next_cursor": None, "links": {}})
        return httpx.Response(202, json=JOB)

    return Client("http://gw/base/", "k", transport=httpx.MockTransport(handle))


def test_every_submit_option_is_sent_and_one_this_client_does_not_know_too(
    client: Client, sent: list[httpx.Request]
) -> None:
    children = [{"type": "noop", "payload": {"c": 1}}]
    client.submit(
        "noop", {"x": 1}, queue="q", priority=9, children=children, on_child_failure="continue",
        callback_url="https://example.invalid/hook", cache_ttl_s=60, cache_key="k1",
        new_option=True,  # type: ignore[call-arg]
    )  # fmt: skip
    [request] = sent
    assert (request.method, request.url.path) == ("POST", "/base/v1/jobs")
    assert "Idempotency-Key" not in request.headers
    assert json.loads(request.content) == {
        "type": "noop", "payload": {"x": 1}, "queue": "q", "priority": 9, "children": children,
        "on_child_failure": "continue", "callback_url": "https://example.invalid/hook",
        "cache_ttl_s": 60, "cache_key": "k1", "new_option": True,
    }  # fmt: skip


def test_paths_and_queries(client: Client, sent: list[httpx.Request]) -> None:
    client.retry("a/b")
    client.retry("a" * 32, from_start=True)
    client.cancel("a" * 32)
    client.list(status="failed", type="sleep", limit=5, cursor="c")
    assert [str(r.url) for r in sent] == [
        "http://gw/base/v1/jobs/a%2Fb/retry",
        f"http://gw/base/v1/jobs/{'a' * 32}/retry?from_start=true",
        f"http://gw/base/v1/jobs/{'a' * 32}/cancel",
        "http://gw/base/v1/jobs?status=failed&type=sleep&limit=5&cursor=c",
    ]


def test_cancel_and_retry_are_not_repeated_once_they_may_have_arrived() -> None:
    sent: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(503, json={"error": "unavailable", "message": "slow"})

    transport = httpx.MockTransport(handle)
    with Client("http://gw", "k", transport=transport, retries=Retries(backoff_s=0.001)) as c:
        for act in (c.cancel, c.retry):
            with pytest.raises(Unavailable):
                act("a" * 32)
    assert len(sent) == 2
