"""The SSE streams' catch-up: what a response sends from Redis before it goes live.

The caller subscribes first, then reads (the snapshot, or the replay after Last-Event-ID).
An event that lands in between is both in what we read and in the subscriber's buffer; the
subscriber's `SentIds` sends it once. So there is no gap and no repeat, and ids strictly
increase. When the catch-up finds the stream already complete (the job has ended) it closes
the subscriber: there is no live phase.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from redis.asyncio import Redis
from sse_starlette.event import ServerSentEvent

from gateway.subscriber import Subscriber, event_message, parse_id
from producer import Producer
from schemas.keys import QueueKeys
from schemas.models import Event, Job

REPLAY_PAGE = 500
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
    replayed = False
    if last_event_id is not None:
        stream = producer.keys(queue).job_events(job_id)
        head = await producer.redis.xrange(stream, "-", "+", count=1)
        # The job's stream is capped too: if it no longer reaches back to the client's id,
        # a replay would have a hole, so send the snapshot instead.
        replayed = bool(head) and parse_id(head[0][0]) <= parse_id(last_event_id)
    if replayed:
        assert last_event_id is not None
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
    redis: Redis,
    keys: Sequence[QueueKeys],
    *,
    last_event_id: str | None,
    retry_ms: int,
) -> AsyncIterator[ServerSentEvent]:
    """The tenant's events across `keys`' queues after `last_event_id`, when given; the
    live events follow. An event whose id is not above the highest sent (another queue's)
    goes out without an `id:` line, so the client's resume point stays where it was."""
    yield ServerSentEvent(retry=retry_ms)
    if last_event_id is None:
        return
    sub.sent.mark([k.queue for k in keys], parse_id(last_event_id))
    async for event in _replay_merged(redis, keys, last_event_id):
        if sub.matches(event) and event.tenant == sub.tenant:
            with_id = sub.sent.admit(event.queue, parse_id(event.id))
            if with_id is not None:
                yield event_message(event, with_id=with_id)


async def _replay_merged(
    redis: Redis, keys: Sequence[QueueKeys], after: str
) -> AsyncIterator[Event]:
    """The queues' events streams after `after`, merged in id order, a page at a time."""
    cursors = {k.events: after for k in keys}
    buffers: dict[str, list[tuple[str, dict[str, Any]]]] = {k.events: [] for k in keys}
    exhausted: set[str] = set()
    while True:
        for stream, buffer in buffers.items():
            if not buffer and stream not in exhausted:
                rows = await redis.xrange(stream, f"({cursors[stream]}", "+", count=REPLAY_PAGE)
                buffer.extend(rows)
                if rows:
                    cursors[stream] = rows[-1][0]
                if len(rows) < REPLAY_PAGE:
                    exhausted.add(stream)
        heads = [(parse_id(b[0][0]), s) for s, b in buffers.items() if b]
        if not heads:
            return
        _, stream = min(heads)
        entry_id, fields = buffers[stream].pop(0)
        yield Event.from_entry(entry_id, fields)
