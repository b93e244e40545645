"""The SSE streams: what one response sends, in order. Subscribing happens before any read
(the caller passes a registered subscriber), so an event is either in what we read from
Redis or in the subscriber's buffer, and `last id sent` removes the overlap: no gap, no
repeat, ids strictly increasing.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from redis.asyncio import Redis
from sse_starlette.event import ServerSentEvent

from gateway.hub import Subscriber, SubscriberClosed, parse_id
from gateway.throttle import ProgressThrottle
from producer import Producer
from schemas.keys import QueueKeys
from schemas.models import Event, Job

REPLAY_PAGE = 500
SNAPSHOT_EVENT = "snapshot"


def event_message(event: Event, *, with_id: bool = True) -> ServerSentEvent:
    return ServerSentEvent(
        data=event.model_dump_json(),
        event=event.event.value,
        id=event.id if with_id else None,
    )


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
    progress_interval_s: float,
) -> AsyncIterator[ServerSentEvent]:
    """`snapshot` (or the replay after `last_event_id`), then live events, until terminal."""
    yield ServerSentEvent(retry=retry_ms)
    last: tuple[int, int] | None = None
    replayed = False
    if last_event_id is not None:
        stream = producer.keys(queue).job_events(job_id)
        head = await producer.redis.xrange(stream, "-", "+", count=1)
        # The job's stream is capped too: if it no longer reaches back to the client's id,
        # a replay would have a hole, so send the snapshot instead.
        replayed = bool(head) and parse_id(head[0][0]) <= parse_id(last_event_id)
    if replayed:
        assert last_event_id is not None
        last = parse_id(last_event_id)
        after = last_event_id
        while True:
            page = await producer.events(queue, job_id, after=after, count=REPLAY_PAGE)
            for event in page:
                yield event_message(event)
                last = parse_id(event.id)
                if event.event.is_terminal:
                    return
            if len(page) < REPLAY_PAGE:
                break
            after = page[-1].id
    else:
        job = await producer.get(queue, job_id)
        if job is None:
            return
        yield snapshot_message(job)
        if job.last_event_id:
            last = parse_id(job.last_event_id)
        if job.status.is_terminal:
            return
    throttle = ProgressThrottle(progress_interval_s)
    async for event in _live(sub, throttle):
        key = parse_id(event.id)
        if last is not None and key <= last:
            continue
        last = key
        yield event_message(event)
        if event.event.is_terminal:
            return


async def _live(sub: Subscriber, throttle: ProgressThrottle) -> AsyncIterator[Event]:
    """The subscriber's events through the progress throttle; ends when it is closed."""
    while True:
        try:
            event = await sub.next(throttle.next_due_in(time.monotonic()))
        except SubscriberClosed:
            return
        now = time.monotonic()
        out = throttle.due(now) if event is None else throttle.admit(event, now)
        for item in out:
            yield item


async def firehose_stream(
    sub: Subscriber,
    redis: Redis,
    keys: Sequence[QueueKeys],
    *,
    last_event_id: str | None,
    retry_ms: int,
    progress_interval_s: float,
) -> AsyncIterator[ServerSentEvent]:
    """The tenant's events across `keys`' queues, after `last_event_id` when given.

    Ids are per queue stream; the client's Last-Event-ID must only grow, so an event whose
    id is not above the highest sent (another queue's, or a held progress) goes out without
    an `id:` line and the client's resume point stays where it was.
    """
    yield ServerSentEvent(retry=retry_ms)
    sent: dict[str, tuple[int, int]] = {}
    highest: tuple[int, int] | None = None

    def message(event: Event) -> ServerSentEvent | None:
        nonlocal highest
        key = parse_id(event.id)
        seen = sent.get(event.queue)
        if seen is not None and key <= seen:
            return None
        sent[event.queue] = key
        fresh = highest is None or key > highest
        if fresh:
            highest = key
        return event_message(event, with_id=fresh)

    if last_event_id is not None:
        start = parse_id(last_event_id)
        highest = start
        for k in keys:
            sent[k.queue] = start
        async for event in _replay_merged(redis, keys, last_event_id):
            if sub.matches(event) and event.tenant == sub.tenant:
                msg = message(event)
                if msg is not None:
                    yield msg
    throttle = ProgressThrottle(progress_interval_s)
    async for event in _live(sub, throttle):
        msg = message(event)
        if msg is not None:
            yield msg


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
