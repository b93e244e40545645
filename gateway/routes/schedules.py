"""`/v1/schedules`: a tenant's schedules, each submitting one job per tick of its cron
expression (consumers/scheduling.py runs them; schemas/schedules.py says when they tick)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, HTTPException, Response

from gateway.deps import GatewayDep, Tenant
from gateway.errors import QueueNotConfigured, redis_deadline
from gateway.models import ERRORS, ScheduleList
from schemas.schedules import Schedule, ScheduleRequest

router = APIRouter(prefix="/v1/schedules", tags=["schedules"])
NOT_404: dict[int | str, dict[str, Any]] = {k: v for k, v in ERRORS.items() if k != 404}


@router.post(
    "",
    status_code=201,
    response_model=Schedule,
    responses={200: {"model": Schedule, "description": "replaced the one of that name"}, **NOT_404},
)
async def put(body: ScheduleRequest, gw: GatewayDep, tenant: Tenant, response: Response) -> Any:
    """Create the schedule, or replace the tenant's schedule of the same name (`200`). Its
    first job is for the first tick after now; its type and payload are checked as a
    submit's are."""
    settings = gw.settings
    if "queue" not in body.model_fields_set:
        body = body.model_copy(update={"queue": settings.queues[0]})
    if body.queue not in settings.queues:
        raise QueueNotConfigured(body.queue, settings.queues)
    gw.job_types.check(body.type, body.payload)
    now_ms = int(time.time() * 1000)
    schedule = Schedule(**body.model_dump(), tenant=tenant, origin="api", created_at=now_ms)
    async with redis_deadline(settings.redis_timeout_s):
        for queue in settings.queues:  # a name is the tenant's across queues: one of them
            if queue != schedule.queue:
                await gw.producer.delete_schedule(queue, tenant, schedule.name)
        created = await gw.producer.put_schedule(schedule)
    if not created:
        response.status_code = 200
    _, upcoming = schedule.ticks_after(now_ms, now_ms)
    return schedule.model_copy(update={"next_run_at": upcoming})


@router.get("", response_model=ScheduleList, responses=NOT_404)
async def list_(gw: GatewayDep, tenant: Tenant) -> Any:
    """The tenant's schedules, with when each last submitted a job and when it next will."""
    items: list[Schedule] = []
    async with redis_deadline(gw.settings.redis_timeout_s):
        for queue in gw.settings.queues:
            items += await gw.producer.schedules(queue, tenant)
    now_ms = int(time.time() * 1000)
    return ScheduleList(items=[_with_next_run(s, now_ms) for s in items])


@router.delete("/{name}", status_code=204, responses=ERRORS)
async def delete(name: str, gw: GatewayDep, tenant: Tenant) -> Response:
    async with redis_deadline(gw.settings.redis_timeout_s):
        removed = [await gw.producer.delete_schedule(q, tenant, name) for q in gw.settings.queues]
    if not any(removed):
        raise HTTPException(404, f"no schedule named {name!r}")
    return Response(status_code=204)


def _with_next_run(schedule: Schedule, now_ms: int) -> Schedule:
    """The next run as the workers recorded it, or, before any worker saw the schedule, as
    its cron expression says."""
    if schedule.next_run_at is not None and schedule.next_run_at > now_ms:
        return schedule
    after = max(now_ms, schedule.last_run_at or 0)
    _, upcoming = schedule.ticks_after(after, after)
    return schedule.model_copy(update={"next_run_at": upcoming})
