"""Submitting the jobs of a queue's schedules, from every worker of the queue at once.

Each worker evaluates every schedule of its queue about once a second (sooner when a tick
is due) and, for the latest tick that is due and not yet recorded, submits the schedule's
job under the idempotency key `schedule:<name>:<tick>`; only then does it record the tick
(producer/scripts/schedule_tick.lua). Workers racing on one tick make one job (the key), and
a worker that dies between the two steps leaves the tick unrecorded, so another submits it
again and gets the same job back. After downtime only the latest missed tick is due: at most
one catch-up run, however long the gap.

Schedules come from `POST /v1/schedules` (five-field cron, in a time zone: schemas/
schedules.py) and from arq's `cron_jobs = [cron(...)]` in the worker settings, which this
worker declares into its queue at startup (origin `worker`; arq's own timing, seconds
included). A cron job runs as a job of its own type, named after it.

`CONVEYOR_SCHEDULE_CLOCK_SCALE` speeds the schedules' clock up, for tests only: at 60, a
minute of cron time passes every second.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from arq.cron import CronJob, next_cron

from consumers import registry
from consumers.periodic import pause
from schemas.models import SubmitRequest
from schemas.schedules import Schedule

if TYPE_CHECKING:
    from consumers.worker import ConveyorWorker

logger = logging.getLogger("conveyor.worker")

EPOCH_MS = 1_767_225_600_000  # 2026-01-01: where a scaled clock starts from
MAX_WAIT_S = 1.0  # new and changed schedules are seen within this
ARQ_CATCH_UP_S = 86_400  # how far back an arq timing looks for a missed tick


class Scheduler:
    def __init__(self, worker: ConveyorWorker) -> None:
        self.worker = worker
        self.producer = worker.producer
        self.queue = worker.queue
        self.scale = worker.settings.schedule_clock_scale
        self.cron_jobs = {
            job.name: job for job in registry.cron_jobs(worker.settings, worker.handlers)
        }

    def now_ms(self) -> int:
        real = int(time.time() * 1000)
        return real if self.scale == 1 else EPOCH_MS + int((real - EPOCH_MS) * self.scale)

    async def run(self) -> None:
        w = self.worker
        try:
            await self.declare()
        except Exception:  # its schedules are declared by the next worker that starts
            logger.exception("could not declare the worker's cron jobs as schedules")
        while not w.stopping.is_set():
            try:
                wait_ms = await self.submit_due()
            except Exception:
                logger.exception("schedules failed; retrying in %.1fs", MAX_WAIT_S)
                wait_ms = int(MAX_WAIT_S * 1000 * self.scale)
            await pause(w.stopping, min(MAX_WAIT_S, max(0.01, wait_ms / 1000 / self.scale)))

    async def declare(self) -> None:
        """The worker settings' cron jobs, as this queue's schedules."""
        for job in self.cron_jobs.values():
            schedule = Schedule(
                name=job.name,
                cron=describe(job),
                type=job.name,
                queue=self.queue,
                origin="worker",
                created_at=self.now_ms(),
            )
            await self.producer.put_schedule(schedule)

    async def submit_due(self) -> int:
        """Submit each schedule's due tick; returns the ms until the next tick of any."""
        now = self.now_ms()
        soonest = now + int(MAX_WAIT_S * 1000 * self.scale)
        for schedule in await self.producer.schedules(self.queue):
            due, upcoming = self.ticks(schedule, now)
            if due is not None:
                request = SubmitRequest(
                    type=schedule.type, payload=schedule.payload, queue=schedule.queue
                )
                submitted = await self.producer.submit(
                    request,
                    tenant=schedule.tenant,
                    idempotency_key=f"schedule:{schedule.name}:{due}",
                )
                if submitted.created:
                    logger.info(
                        "schedule %s: submitted job %s for its tick at %d",
                        schedule.key,
                        submitted.job_id,
                        due,
                    )
            if due is not None or upcoming != schedule.next_run_at:
                await self.producer.schedule_ticked(schedule, due, upcoming)
            soonest = min(soonest, upcoming)
        return soonest - now

    def ticks(self, schedule: Schedule, now_ms: int) -> tuple[int | None, int]:
        """(the latest due tick not yet run, or None; the next tick after now)."""
        after = schedule.last_run_at or schedule.created_at
        if schedule.origin == "api":
            return schedule.ticks_after(after, now_ms)
        job = self.cron_jobs.get(schedule.name)
        if job is None:  # declared by workers of another deployment: theirs to run
            return None, now_ms + 60_000
        return arq_ticks(job, after, now_ms)


def arq_ticks(job: CronJob, after_ms: int, now_ms: int) -> tuple[int | None, int]:
    """`Schedule.ticks_after` for an arq timing (its `next_cron`, which has seconds)."""

    def following(moment: datetime) -> datetime:
        return next_cron(
            moment,
            month=job.month,
            day=job.day,
            weekday=job.weekday,
            hour=job.hour,
            minute=job.minute,
            second=job.second,
            microsecond=job.microsecond,
        )

    now = datetime.fromtimestamp(now_ms / 1000, UTC)
    start = max(
        datetime.fromtimestamp(after_ms / 1000, UTC), now - timedelta(seconds=ARQ_CATCH_UP_S)
    )
    latest = None
    tick = following(start)
    while tick <= now:
        latest = tick
        tick = following(tick)
    upcoming = int(tick.timestamp() * 1000)
    return (int(latest.timestamp() * 1000) if latest else None), upcoming


def describe(job: CronJob) -> str:
    """An arq timing as a line for people (`conveyor inspect`, the API): `second=0,30`."""
    parts = []
    for name in ("month", "day", "weekday", "hour", "minute", "second"):
        value = getattr(job, name)
        if value is None:
            continue
        if isinstance(value, set | frozenset | list | tuple):
            value = ",".join(str(v) for v in sorted(value))
        parts.append(f"{name}={value}")
    return ("arq cron: " + " ".join(parts))[:200]
