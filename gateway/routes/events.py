"""Server-Sent Events: one job's events, and the tenant's firehose."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query
from sse_starlette import EventSourceResponse

from gateway.access import own_job
from gateway.deps import FirehoseTenant, Gateway, GatewayDep, JobEventsTenant
from gateway.models import ERRORS
from gateway.sse.catch_up import firehose_stream, job_stream
from gateway.sse.response import HubEventSourceResponse
from schemas.stream_id import is_stream_id

router = APIRouter(tags=["events"])

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
    return HubEventSourceResponse(content, gw.hub, sub, "job", gw.metrics)


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
    queues = [q for q in settings.queues if not queue or q in queue]
    content = firehose_stream(
        sub,
        gw.producer,
        queues,
        last_event_id=_resume_id(last_event_id_header, last_event_id),
        retry_ms=settings.sse_retry_ms,
    )
    return HubEventSourceResponse(content, gw.hub, sub, "firehose", gw.metrics)
