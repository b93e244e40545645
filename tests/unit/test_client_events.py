"""Following a job's events: parsing SSE, and resuming after a broken connection without
losing or repeating an event (stub transports here; tests/integration has the real thing)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from conveyor.client import AsyncClient, Client, Event, NotFound, Retries
from conveyor.client.sse import Decoder, Message

FAST = Retries(attempts=3, backoff_s=0.001, max_backoff_s=0.01)
JOB_ID = "a" * 32


def test_the_decoder_follows_the_event_stream_format() -> None:
    decoder = Decoder()
    lines = [
        "retry: 5000", "",
        ": ping", "",
        "id: 1-0", "event: job.queued", "data: {\"a\":", "data:1}", "",
        "data: plain", "",
        "id: 2-0", "",
    ]  # fmt: skip
    messages = [m for line in lines if (m := decoder.feed(line)) is not None]
    assert messages == [
        Message("job.queued", '{"a":\n1}', "1-0"),
        Message("message", "plain", None),
    ]


def event(entry_id: str, kind: str, status: str) -> dict[str, Any]:
    return {
        "id": entry_id, "event": kind, "job_id": JOB_ID, "queue": "q", "job_type": "noop",
        "tenant": "acme", "status": status, "attempt": 1, "ts": 1, "data": {},
    }  # fmt: skip


E1 = event("1-0", "job.queued", "queued")
E2 = event("2-0", "job.started", "running")
E3 = event("3-0", "job.progress", "running")
E4 = event("4-0", "job.succeeded", "succeeded")


def frames(*events: dict[str, Any]) -> bytes:
    text = "retry: 5000\r\n\r\n: ping\r\n\r\n"
    for e in events:
        text += f"id: {e['id']}\r\nevent: {e['event']}\r\ndata: {json.dumps(e)}\r\n\r\n"
    return text.encode()


class Breaks(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A body that sends `data`, then the connection breaks."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __iter__(self) -> Iterator[bytes]:
        yield self.data
        raise httpx.ReadError("connection reset by peer")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data
        raise httpx.ReadError("connection reset by peer")


class Gateway:
    """History says E1; the first stream sends E2, E3 and breaks; the second replays E3 (an
    overlap the client must drop) and ends with E4."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path.endswith("/history"):
            return httpx.Response(200, json=[E1])
        sse = {"Content-Type": "text/event-stream"}
        if request.headers.get("Last-Event-ID") == "1-0":
            return httpx.Response(200, headers=sse, stream=Breaks(frames(E2, E3)))
        return httpx.Response(200, headers=sse, content=frames(E3, E4))

    def resumed_from(self) -> list[str | None]:
        return [r.headers.get("Last-Event-ID") for r in self.requests[1:]]


def test_events_resume_after_a_broken_connection_without_loss_or_repeat() -> None:
    gateway = Gateway()
    with Client("http://gw", "k", transport=httpx.MockTransport(gateway), retries=FAST) as client:
        got = list(client.events(JOB_ID))
    assert [e.id for e in got] == ["1-0", "2-0", "3-0", "4-0"]
    assert got[-1].is_terminal and got[-1].event == "job.succeeded"
    assert gateway.resumed_from() == ["1-0", "3-0"]
    assert all(r.headers["Authorization"] == "Bearer k" for r in gateway.requests)


async def test_async_events_resume_the_same_way() -> None:
    gateway = Gateway()
    transport = httpx.MockTransport(gateway)
    async with AsyncClient("http://gw", "k", transport=transport, retries=FAST) as client:
        got = [e async for e in client.events(JOB_ID)]
    assert [e.id for e in got] == ["1-0", "2-0", "3-0", "4-0"]
    assert gateway.resumed_from() == ["1-0", "3-0"]


def test_a_snapshot_is_delivered_as_an_event_and_can_end_the_stream() -> None:
    job = {"id": JOB_ID, "queue": "q", "type": "noop", "status": "failed", "error": "boom"}
    body = f"id: 9-0\nevent: snapshot\ndata: {json.dumps({**job, 'last_event_id': '9-0'})}\n\n"

    def handle(request: httpx.Request) -> httpx.Response:
        assert request.headers["Last-Event-ID"] == "5-0"
        return httpx.Response(200, content=body.encode())

    with Client("http://gw", "k", transport=httpx.MockTransport(handle)) as client:
        [got] = list(client.events(JOB_ID, last_event_id="5-0"))
    assert got == Event(id="9-0", event="snapshot", job_id=JOB_ID, status="failed", data=got.data)
    assert got.data["error"] == "boom"
    assert got.is_terminal


def test_events_of_a_missing_job_raise_not_found_at_once() -> None:
    body = {"error": "not_found", "message": f"job {JOB_ID!r} not found"}
    handle = httpx.MockTransport(lambda request: httpx.Response(404, json=body))
    with Client("http://gw", "k", transport=handle, retries=FAST) as client:
        with pytest.raises(NotFound):
            list(client.events(JOB_ID))
        with pytest.raises(NotFound):
            list(client.events(JOB_ID, last_event_id="1-0"))
