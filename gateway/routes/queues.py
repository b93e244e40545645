"""`/v1/queues`: each queue at a glance, and the queue-wide actions an operator takes during
an incident (pause, resume, re-run the dead letters). Admin keys only: these touch every
tenant's jobs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Response

from gateway.deps import Admin, GatewayDep
from gateway.errors import redis_deadline
from gateway.models import ERRORS, DeadRetry, FinishedMinute, QueueInfo, QueueList
from producer.reads import QueueOverview

router = APIRouter(prefix="/v1/queues", tags=["queues"], dependencies=[Admin])
ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    403: {"description": "a tenant's key: queue-wide actions need an admin key"},
}


@router.get("", response_model=QueueList, responses=ADMIN_ERRORS)
async def list_(gw: GatewayDep) -> Any:
    async with redis_deadline(gw.settings.redis_timeout_s):
        overviews = [await gw.producer.overview(queue) for queue in gw.settings.queues]
    return QueueList(items=[_info(o) for o in overviews])


@router.post("/{queue}/pause", status_code=204, responses=ADMIN_ERRORS)
async def pause(queue: str, gw: GatewayDep) -> Response:
    """Start nothing more from the queue: submits are still accepted, running jobs finish."""
    async with redis_deadline(gw.settings.redis_timeout_s):
        await gw.producer.pause(_configured(gw, queue))
    return Response(status_code=204)


@router.post("/{queue}/resume", status_code=204, responses=ADMIN_ERRORS)
async def resume(queue: str, gw: GatewayDep) -> Response:
    async with redis_deadline(gw.settings.redis_timeout_s):
        await gw.producer.resume(_configured(gw, queue))
    return Response(status_code=204)


@router.post("/{queue}/dead/retry", response_model=DeadRetry, responses=ADMIN_ERRORS)
async def retry_dead(queue: str, gw: GatewayDep) -> Any:
    """Re-queue the queue's dead-lettered jobs (up to 1,000 a call), each as `POST /retry`."""
    async with redis_deadline(gw.settings.redis_timeout_s):
        retried, skipped = await gw.producer.retry_dead(_configured(gw, queue))
    return DeadRetry(retried=retried, skipped=skipped)


def _configured(gw: GatewayDep, queue: str) -> str:
    if queue not in gw.settings.queues:
        raise HTTPException(404, f"queue {queue!r} is not configured")
    return queue


def _info(o: QueueOverview) -> QueueInfo:
    s = o.stats
    return QueueInfo(
        name=o.queue,
        paused=o.paused,
        counts={
            "scheduled": s.delayed,
            "waiting": o.waiting,
            "queued": s.lag + s.backlog,
            "running": s.pending,
        },
        length=s.length,
        pending=s.pending,
        lag=s.lag,
        backlog=s.backlog,
        delayed=s.delayed,
        dead_lettered=s.dead,
        consumers=len(s.seen_ms),
        finished_per_minute=[
            FinishedMinute(minute=minute, **counts) for minute, counts in o.finished
        ],
    )
