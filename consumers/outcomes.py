"""How a job's attempt ends: every ending leaves through `Outcomes`, which decides what is
written, writes it (or hands it to the lane that does), and counts, measures and logs it.

    succeeded      `succeeded`: parked on `Running.outcome` and its slot given back; its lane
                   writes it with its next `Producer.take`, the round trip that also takes
                   the next jobs (`collect`, then `written` counts and logs it)
    retrying       `failed`: a retryable error with attempts left: `Producer.fail` schedules
                   it with backoff, in the job's own task
    failed         `failed`: a permanent error or no attempts left: failed and dead-lettered
    timed out      `stopped`, then `failed` (retryable)
    cancelled      `stopped`: `Producer.cancelled`
    lease lost     `stopped`: nothing written, the consumer that took the job over finishes it
    shutting down  `stopped`: nothing written, the entry stays pending for a reclaim

Success alone is batched: a busy consumer's jobs are almost all successes, and the round
trip that takes its next jobs carries their writes too. Every write is fenced by its script:
a job another consumer took over meanwhile is not written by this one.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from arq.worker import Function, Retry
from redis.exceptions import BusyLoadingError, ConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from consumers import metrics
from consumers.errors import describe
from consumers.execution import JobLog, Running, clear_own_cancel
from producer import Delivery
from schemas import tracing
from schemas.errors import PermanentError
from schemas.models import Artifact

if TYPE_CHECKING:
    from consumers.context import JobContext
    from consumers.lanes import Lane
    from consumers.worker import ConveyorWorker

logger = logging.getLogger("conveyor.worker")
T = TypeVar("T")

REDIS_RETRY_S = 0.5


def backoff_ms(attempt: int, base_s: float, cap_s: float) -> int:
    """Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And
    Jitter"): spreads retries of jobs that failed together."""
    ceiling = min(cap_s, base_s * 2 ** max(0, attempt - 1))
    return int(random.uniform(0, ceiling) * 1000)


async def persist(write: Callable[[], Awaitable[T]], within_s: float) -> T:
    """Make a job's final write survive a Redis restart or failover: retry on connection
    errors for up to `within_s` (a visibility timeout). Past that another consumer may own
    the job, and the fenced script would refuse the write anyway."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return await write()
        except (ConnectionError, RedisTimeoutError, BusyLoadingError) as exc:
            if time.monotonic() > deadline:
                raise
            logger.warning("final write failed (%s); retrying", describe(exc))
            await asyncio.sleep(REDIS_RETRY_S)


class Outcomes:
    """The one way out for the jobs of a worker (see the module docstring). Counts on the
    worker: arq's `jobs_complete`, `jobs_failed` and `jobs_retried`, which its signal
    handlers log, and `jobs_cancelled`."""

    def __init__(self, worker: ConveyorWorker) -> None:
        self.worker = worker
        self.producer = worker.producer
        self.settings = worker.settings
        self.running = worker.running
        self.default_max_tries = worker.max_tries
        self.retry_scheduled = worker.delayed_changed  # promote sooner

    # --- success, batched ------------------------------------------------------------------

    def succeeded(self, running: Running, result: Any, ctx: JobContext) -> None:
        """Park the outcome for the lane's next round trip, and give the slot back at once:
        that round trip then writes this job and takes the next one. The job stays in
        `running` (leases, cancels) until written."""
        d = running.delivery
        duration_s, stages = ctx.timings()
        metrics.labelled(metrics.DURATION, d.queue, d.type).observe(duration_s)
        artifacts = ctx.artifacts
        for artifact in artifacts:
            metrics.labelled(metrics.UPLOAD_BYTES, d.queue, d.type).inc(artifact.size)
        running.outcome = (result, artifacts)
        running.log_fields = {"duration_s": duration_s, "stages": stages}
        tracing.ended(running.span, "succeeded")
        running.lane.finished.append(running)
        running.lane.release(running)

    def collect(
        self, lane: Lane
    ) -> tuple[list[Running], list[tuple[Delivery, Any, list[Artifact]]]]:
        """The lane's succeeded jobs, and what `Producer.take` writes for them."""
        finished, lane.finished = lane.finished, []
        return finished, [(r.delivery, *r.outcome) for r in finished if r.outcome]

    def written(self, finished: list[Running], written: list[bool] | None) -> None:
        """The outcomes of `finished` were written (True), fenced out (False), or could not
        be written (`written` is None: their leases lapse and other consumers retry them)."""
        outcomes: list[bool | None] = (
            list(written) if written is not None else [None] * len(finished)
        )
        succeeded: dict[tuple[str, str], int] = {}
        for running, ok in zip(finished, outcomes, strict=True):
            d = running.delivery
            self.running.pop(d.job_id, None)
            if ok:
                self.worker.jobs_complete += 1
                succeeded[d.queue, d.type] = succeeded.get((d.queue, d.type), 0) + 1
                running.log.info("succeeded", extra=running.log_fields)
            elif ok is False:
                running.log.warning(
                    "succeeded, but the job was taken over meanwhile: result dropped"
                )
        # Counted once per type of a batch: a counter's lock and lookup per job were a few
        # per cent of a no-op job's consumer CPU.
        for (queue, job_type), count in succeeded.items():
            metrics.labelled(metrics.JOBS, queue, job_type, "succeeded").inc(count)

    # --- every other ending, written from the job's own task ---------------------------------

    async def failed(
        self,
        running: Running,
        exc: BaseException,
        function: Function | None,
        ctx: JobContext | None = None,
    ) -> None:
        d = running.delivery
        retryable = not isinstance(exc, PermanentError)
        if isinstance(exc, Retry) and exc.defer_score is not None:
            delay_ms = int(exc.defer_score)
        else:
            delay_ms = backoff_ms(
                d.attempt, self.settings.backoff_base_s, self.settings.backoff_max_s
            )
        max_tries = (function.max_tries if function else None) or self.default_max_tries
        outcome = await persist(
            lambda: self.producer.fail(
                d,
                describe(exc),
                retryable=retryable,
                backoff_ms=delay_ms,
                default_max_attempts=max_tries,
            ),
            self.settings.visibility_timeout_s,
        )
        tracing.ended(running.span, outcome, exc)  # retrying, failed, or fenced
        duration_s, stages = ctx.timings() if ctx else (0.0, {})
        record = {"error": describe(exc), "duration_s": duration_s, "stages": stages}
        if outcome == "retrying":
            self.worker.jobs_retried += 1
            self.retry_scheduled.set()
            metrics.labelled(metrics.JOBS, d.queue, d.type, "retried").inc()
            running.log.info("failed, will retry in %.1fs", delay_ms / 1000, extra=record)
        elif outcome == "failed":
            self.worker.jobs_failed += 1
            metrics.labelled(metrics.JOBS, d.queue, d.type, "failed").inc()
            metrics.labelled(metrics.DEAD_LETTERED, d.queue, "handler_error").inc()
            running.log.warning("failed and dead-lettered", extra=record)

    async def stopped(
        self,
        running: Running,
        log: JobLog,
        function: Function,
        ctx: JobContext,
        timeout_s: float,
    ) -> None:
        """This job's task was cancelled: its handler ran past its timeout, a user asked,
        the lease was lost, or this worker is shutting down (then the entry stays pending
        for another consumer to reclaim, and the cancellation propagates)."""
        d = running.delivery
        if running.stop_reason is None:
            tracing.ended(running.span, "shutdown")
            log.info("shutting down: left pending for another consumer to reclaim")
            raise asyncio.CancelledError
        clear_own_cancel()
        if running.stop_reason == "timed_out":
            error = TimeoutError(f"timed out after {timeout_s:g}s")
            await self.failed(running, error, function, ctx)
        elif running.stop_reason == "cancelled":
            tracing.ended(running.span, "cancelled")
            if await persist(
                lambda: self.producer.cancelled(d, "cancelled by request"),
                self.settings.visibility_timeout_s,
            ):
                self.worker.jobs_cancelled += 1
                metrics.labelled(metrics.JOBS, d.queue, d.type, "cancelled").inc()
                log.info("cancelled by request")
        else:
            tracing.ended(running.span, "lease_lost")
            log.warning("lease lost to another consumer; stopped without writing")
