"""The SSE streams' catch-up: what a response sends from Redis before it goes live.

The caller subscribes first, then reads (the snapshot, or the replay after Last-Event-ID).
An event that lands in between is both in what we read and in the subscriber's buffer; the
subscriber's `SentIds` sends it once. So there is no gap and no repeat, and ids strictly
increase. When the catch-up finds the stream already complete (the job has ended) it closes
the subscriber: there is no live phase.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from sse_starlette.event import ServerSentEvent

from gateway.sse.subscriber import Subscriber, event_message
from producer import Producer
from producer.reads import REPLAY_PAGE
from schemas.models import Job
from schemas.stream_id import parse_id

SNAPSHOT_EVENT = "snapshot"


def snapshot_message(job: Job) -> ServerSentEvent:
    return ServerSentEvent(data=job.model_dump_json(), event=SNAPSHOT_EVENT, id=job.last_event_id)


async def job_stream(
    sub: Subscriber,
    producer: Producer,
    queue: str,
    job_id: str,
    *,
    last_event_id: str | None,
    retry_ms: int,
) -> AsyncIterator[ServerSentEvent]:
    """`snapshot` (or the replay after `last_event_id`); the live events follow."""
    yield ServerSentEvent(retry=retry_ms)
    # If the job's (capped) stream no longer reaches back to the client's id, a replay would
    # have a hole: send the snapshot instead.
    if last_event_id is not None and await producer.history_reaches(queue, job_id, last_event_id):
        sub.sent.mark([queue], parse_id(last_event_id))
        after = last_event_id
        while True:
            page = await producer.events(queue, job_id, after=after, count=REPLAY_PAGE)
            for event in page:
                sub.sent.admit(queue, parse_id(event.id))
                yield event_message(event)
                if event.event.is_terminal:
                    sub.close()
                    return
            if len(page) < REPLAY_PAGE:
                return
            after = page[-1].id
    job = await producer.get(queue, job_id)
    if job is None:
        sub.close()
        return
    yield snapshot_message(job)
    if job.last_event_id:
        sub.sent.mark([queue], parse_id(job.last_event_id))
    if job.status.is_terminal:
        sub.close()


async def firehose_stream(
    sub: Subscriber,
    producer: Producer,
    queues: Sequence[str],
    *,
    last_event_id: str | None,
    retry_ms: int,
) -> AsyncIterator[ServerSentEvent]:
    """The tenant's events across `queues` after `last_event_id`, when given; the live
    events follow. An event whose id is not above the highest sent (another queue's) goes
    out without an `id:` line, so the client's resume point stays where it was."""
    yield ServerSentEvent(retry=retry_ms)
    if last_event_id is None:
        return
    sub.sent.mark(list(queues), parse_id(last_event_id))
    async for event in producer.queue_events_after(queues, last_event_id):
        if sub.matches(event) and event.tenant == sub.tenant:
            with_id = sub.sent.admit(event.queue, parse_id(event.id))
            if with_id is not None:
                yield event_message(event, with_id=with_id)
