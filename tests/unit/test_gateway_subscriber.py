"""How one SSE subscriber writes: straight through while the server accepts, dropped when it
would wait, and never an id twice or out of order."""

from __future__ import annotations

import asyncio

from starlette.types import Message

from gateway.sse.subscriber import Outgoing, SentIds, Subscriber, direct_writer
from schemas.models import Event
from schemas.stream_id import is_stream_id


def event(entry_id: str, *, queue: str = "q", kind: str = "job.progress") -> Event:
    return Event.from_entry(
        entry_id,
        {
            "event": kind,
            "job_id": "j1",
            "queue": queue,
            "job_type": "sleep",
            "tenant": "acme",
            "status": "succeeded" if kind == "job.succeeded" else "running",
            "ts": "1764000000000",
        },
    )


async def test_a_send_that_completes_at_once_is_written() -> None:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    assert direct_writer(send)(b"data: x\r\n\r\n")
    assert sent == [{"type": "http.response.body", "body": b"data: x\r\n\r\n", "more_body": True}]


async def test_a_send_that_would_wait_is_abandoned_unsent_and_reported() -> None:
    writable = asyncio.get_running_loop().create_future()
    written: list[bytes] = []
    abandoned = False

    async def send(message: Message) -> None:  # as uvicorn's, when its transport is paused
        nonlocal abandoned
        try:
            await writable
        except GeneratorExit:
            abandoned = True
            raise
        written.append(message["body"])

    assert not direct_writer(send)(b"data: x\r\n\r\n")
    assert abandoned and written == []


async def test_a_send_that_fails_is_reported() -> None:
    async def send(message: Message) -> None:
        raise OSError("connection reset")

    assert not direct_writer(send)(b"data: x\r\n\r\n")


def test_sent_ids_skip_repeats_and_only_ever_raise_the_resume_point() -> None:
    sent = SentIds()
    sent.mark(["a", "b"], (100, 0))
    assert sent.admit("a", (100, 0)) is None  # already covered by the catch-up
    assert sent.admit("a", (105, 0)) is True
    assert sent.admit("b", (103, 0)) is False  # new for b, but below the id the client holds
    assert sent.admit("b", (103, 0)) is None
    assert sent.admit("b", (106, 0)) is True


def test_buffered_events_flush_in_order_on_going_live_and_a_job_stream_ends_at_terminal() -> None:
    frames: list[bytes] = []
    sub = Subscriber(10, queue="q", job_id="j1")
    sub.sent.mark(["q"], (1, 0))  # the snapshot covered 1-0
    for entry_id, kind in [("1-0", "job.started"), ("2-0", "job.progress")]:
        assert sub.push(Outgoing(event(entry_id, kind=kind)))
    assert frames == [] and len(sub) == 2

    sub.go_live(lambda frame: frames.append(frame) is None)
    assert [f.split(b"\r\n")[0] for f in frames] == [b"id: 2-0"]
    assert sub.push(Outgoing(event("3-0", kind="job.succeeded")))
    assert frames[-1].startswith(b"id: 3-0\r\nevent: job.succeeded\r\n")
    assert sub.closed and not sub.dropped
    assert sub.push(Outgoing(event("4-0")))  # after the end: ignored
    assert len(frames) == 2


def test_a_full_catch_up_buffer_drops_the_subscriber() -> None:
    sub = Subscriber(2, tenant="acme")
    assert sub.push(Outgoing(event("1-0")))
    assert sub.push(Outgoing(event("2-0")))
    assert not sub.push(Outgoing(event("3-0")))
    assert sub.dropped and sub.closed and len(sub) == 0


def test_an_event_is_encoded_once_whatever_the_number_of_subscribers() -> None:
    out = Outgoing(event("7-0"))
    assert out.frame(True) is out.frame(True)
    assert out.frame(False).startswith(b"event: job.progress\r\n")


def test_only_ids_redis_accepts_count_as_stream_ids() -> None:
    accepted = ["0-0", "1-0", "1764000000000-12", f"{2**64 - 1}-{2**64 - 1}"]
    # int() takes underscores, spaces and a missing sequence; Redis takes none of them.
    refused = ["", "1", "1-", "-1", "1_000-0", " 1-0", "1-0\n", "+1-0", f"{2**64}-0", "٣-0", "$"]
    assert [is_stream_id(text) for text in accepted] == [True] * len(accepted)
    assert [is_stream_id(text) for text in refused] == [False] * len(refused)
