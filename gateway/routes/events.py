"""Server-Sent Events: one job's events, and the tenant's firehose."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, HTTPException, Query
from sse_starlette import EventSourceResponse
from sse_starlette.event import ServerSentEvent
from starlette.types import Receive, Scope, Send

from gateway.access import own_job
from gateway.deps import FirehoseTenant, Gateway, GatewayDep, JobEventsTenant
from gateway.routes.jobs import ERRORS
from gateway.streams import firehose_stream, job_stream
from gateway.subscriber import Subscriber, Write, direct_writer, is_stream_id

router = APIRouter(tags=["events"])

# After the hub drops a subscriber, its generator normally ends the response at once. If it
# cannot (it is stuck writing to a client that stopped reading), the connection is cut.
DROP_GRACE_S = 1.0

SSE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "an SSE stream"},
    **ERRORS,
}

LastEventIdHeader = Annotated[
    str | None, Header(alias="Last-Event-ID", description="resume after this event id")
]
LastEventIdQuery = Annotated[
    str | None, Query(max_length=64, description="same as the Last-Event-ID header")
]


class HubEventSourceResponse(EventSourceResponse):
    """An SSE response tied to a hub subscriber: it sends the catch-up read from Redis, then
    hands the subscriber its connection (the hub writes live events from then on) and ends
    when the subscriber closes. Unsubscribed however it ends, and cut off when the hub
    dropped it but the last write is stuck on a client that stopped reading."""

    def __init__(
        self, catch_up: AsyncIterator[ServerSentEvent], gw: Gateway, sub: Subscriber, kind: str
    ) -> None:
        # Pings come from the hub (one loop for every connection), not a task per response.
        super().__init__(self._stream(catch_up), ping=0)
        self.gw = gw
        self.sub = sub
        self.kind = kind
        self._write: Write | None = None

    async def _stream(self, catch_up: AsyncIterator[ServerSentEvent]) -> AsyncIterator[Any]:
        async for message in catch_up:
            yield message
        # Everything yielded so far has been sent: the hub can write after it.
        assert self._write is not None
        self.sub.go_live(self._write)
        await self.sub.wait_closed()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._write = direct_writer(send)
        gauge = self.gw.metrics.sse_connections.labels(self.kind)
        gauge.inc()
        try:
            async with anyio.create_task_group() as group:

                async def cut_when_dropped() -> None:
                    await self.sub.wait_closed()
                    await anyio.sleep(DROP_GRACE_S)
                    group.cancel_scope.cancel()

                group.start_soon(cut_when_dropped)
                await super().__call__(scope, receive, send)
                group.cancel_scope.cancel()
        finally:
            self.gw.hub.unsubscribe(self.sub)
            gauge.dec()


async def _hub_ready(gw: Gateway) -> None:
    try:
        async with asyncio.timeout(gw.settings.redis_timeout_s):
            await gw.hub.ready.wait()
    except TimeoutError:
        raise HTTPException(503, "the event hub is not connected to Redis") from None


def _resume_id(header: str | None, query: str | None) -> str | None:
    value = header or query
    # A malformed id is treated as none: the snapshot is always a correct answer.
    return value if value and is_stream_id(value) else None


@router.get("/v1/jobs/{job_id}/events", response_class=EventSourceResponse, responses=SSE_RESPONSES)
async def job_events(
    job_id: str,
    gw: GatewayDep,
    tenant: JobEventsTenant,
    last_event_id_header: LastEventIdHeader = None,
    last_event_id: LastEventIdQuery = None,
) -> Any:
    """A `snapshot` event, then live events; ends after the terminal event. With
    Last-Event-ID, replays what came after it from the job's own stream instead."""
    job = await own_job(gw, tenant, job_id)
    await _hub_ready(gw)
    sub = gw.hub.subscribe_job(job.queue, job.id)  # before any read: see gateway.streams
    content = job_stream(
        sub,
        gw.producer,
        job.queue,
        job.id,
        last_event_id=_resume_id(last_event_id_header, last_event_id),
        retry_ms=gw.settings.sse_retry_ms,
    )
    return HubEventSourceResponse(content, gw, sub, "job")


@router.get("/v1/events", response_class=EventSourceResponse, responses=SSE_RESPONSES)
async def firehose(
    gw: GatewayDep,
    tenant: FirehoseTenant,
    queue: Annotated[list[str] | None, Query(description="only these queues")] = None,
    type: Annotated[list[str] | None, Query(description="only these job types")] = None,
    event: Annotated[list[str] | None, Query(description="only these event types")] = None,
    last_event_id_header: LastEventIdHeader = None,
    last_event_id: LastEventIdQuery = None,
) -> Any:
    """Every event of the caller's jobs (for dashboards), optionally filtered."""
    settings = gw.settings
    unknown = sorted(set(queue or ()) - set(settings.queues))
    if unknown:
        raise HTTPException(422, f"queue: not configured: {', '.join(unknown)}")
    await _hub_ready(gw)
    sub = gw.hub.subscribe_tenant(tenant, queues=queue, job_types=type, event_types=event)
    keys = [gw.producer.keys(q) for q in settings.queues if not queue or q in queue]
    content = firehose_stream(
        sub,
        gw.redis,
        keys,
        last_event_id=_resume_id(last_event_id_header, last_event_id),
        retry_ms=settings.sse_retry_ms,
    )
    return HubEventSourceResponse(content, gw, sub, "firehose")
