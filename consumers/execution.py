"""Running one delivery: the handler call in the job's own task, the `ctx` it receives, and
`Running`, what the rest of the consumer knows about a job while it runs (its lease, its
slot, why it was stopped). How the attempt ended is handed to consumers/outcomes.py.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any

from arq.worker import Function

from consumers import metrics
from consumers.context import JobContext, ThreadContext
from consumers.registry import Handler
from consumers.steps import Steps
from producer import Delivery, Lease
from schemas import tracing
from schemas.errors import PermanentError
from schemas.models import Artifact, SubmitRequest
from schemas.stream_id import entry_time_s
from schemas.strict_json import NotStrictJson, check_json

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from consumers.lanes import Lane
    from consumers.outcomes import Outcomes
    from consumers.storage import Storage
    from consumers.worker import ConveyorWorker

logger = logging.getLogger("conveyor.worker")


def logger_for(d: Delivery) -> JobLog:
    return JobLog(
        logger, {"job_id": d.job_id, "type": d.type, "attempt": d.attempt, "queue": d.queue}
    )


def clear_own_cancel() -> None:
    """The job's task was cancelled by this worker (`Running.stop`) and goes on to record why:
    clear the cancel, or every later await in the task (that write included) would see a
    cancellation still pending."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


class JobLog(logging.LoggerAdapter[logging.Logger]):
    """Binds a job's identity to every record, and (unlike the stdlib adapter before 3.13)
    keeps the fields a call adds, such as a completion's `stages`."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


class Running:
    """One job this consumer is running: its lease, its task, and why it was stopped; once
    its handler succeeded, the outcome its lane is to write."""

    def __init__(self, delivery: Delivery, lane: Lane) -> None:
        self.delivery = delivery
        self.lane = lane
        self.task: asyncio.Task[Any] | None = None
        self.stop_reason: str | None = None  # "cancelled" | "lease_lost" | "timed_out"
        self.holds_slot = True  # its handler runs (or may): counts against concurrency
        self.outcome: tuple[Any, list[Artifact]] | None = None  # (result, artifacts)
        self.log_fields: dict[str, Any] = {}
        self.since = time.monotonic()
        self.deadline: float | None = None  # while its handler runs: when it times out
        self.span: Span | None = None  # the attempt's span, when this worker traces
        self._log: JobLog | None = None

    def stop(self, reason: str) -> None:
        if self.stop_reason is None and self.task is not None and not self.task.done():
            self.stop_reason = reason
            self.task.cancel()

    @property
    def log(self) -> JobLog:
        """The job's logger, made once per attempt (a job logs from its task and its lane)."""
        if self._log is None:
            self._log = logger_for(self.delivery)
        return self._log

    @property
    def lease(self) -> Lease:
        d = self.delivery
        return Lease(d.job_id, d.entry_id, d.attempt)


class Runner:
    """Runs a delivery's handler in the job's task (`run`), as the worker declared it through
    arq: its functions, their timeouts, `ctx` and the job start and end hooks."""

    def __init__(self, worker: ConveyorWorker, outcomes: Outcomes) -> None:
        self.functions = worker.functions
        self.worker_ctx = worker.ctx
        self.on_job_start = worker.on_job_start
        self.on_job_end = worker.on_job_end
        self.default_timeout_s = worker.job_timeout_s
        self.producer = worker.producer
        self.progress_interval_s = worker.settings.progress_interval_s
        self.outcomes = outcomes
        self.storage: Storage | None = None  # the worker's S3 client, once it started
        # Plain `def` handlers (blocking or CPU-bound work) run here, off the event loop;
        # which ones is decided once, not per job.
        self.threaded = {
            name
            for name, f in self.functions.items()
            if isinstance(f, Function) and not inspect.iscoroutinefunction(f.coroutine)
        }
        self.threads = ThreadPoolExecutor(
            worker.settings.handler_threads, thread_name_prefix="conveyor-handler"
        )

    def close(self) -> None:
        self.threads.shutdown(wait=False, cancel_futures=True)

    def run(self, running: Running) -> Coroutine[Any, Any, None]:
        """The job task's coroutine: run one delivery and hand how it ended to `Outcomes`;
        within the attempt's span when this worker traces (`Outcomes` says on it how the
        attempt ended). An untraced job pays nothing for it, not even a frame."""
        if running.delivery.trace is None:
            return self.attempt(running)
        return self.traced(running)

    async def traced(self, running: Running) -> None:
        d = running.delivery
        with tracing.attempt(d.trace, d.job_id, d.type, d.queue, d.attempt) as span:
            running.span = span
            await self.attempt(running)

    async def attempt(self, running: Running) -> None:
        """The handler runs in this task: a cancel request, a lost lease, its timeout or a
        shutdown cancels the task, and `running.stop_reason` says which."""
        d = running.delivery
        function = self.functions.get(d.type)
        if not isinstance(function, Handler):  # arq keeps cron jobs here too; we run none
            function = None
        log = running.log
        if function is None:
            error = PermanentError(f"no handler for job type {d.type!r} here")
            await self.outcomes.failed(running, error, None)
            return
        ctx = self.context(running, log)
        timeout_s = d.timeout_s or function.timeout_s or self.default_timeout_s
        metrics.labelled(metrics.JOBS, d.queue, d.type, "started").inc()
        metrics.labelled(metrics.PICKUP, d.queue).observe(
            max(0.0, time.time() - entry_time_s(d.entry_id))
        )
        log.debug("started %s attempt %d", d.type, d.attempt)
        try:
            if self.on_job_start:
                await self.on_job_start(self.worker_ctx)
            # See consumers/supervision.py: one sweep stops every handler past its deadline.
            running.deadline = time.monotonic() + timeout_s
            if d.parent:
                ctx.children = await self.producer.children_of(d.queue, d.job_id)
            try:
                # A payload that cannot fit fails here, permanently (InvalidPayload).
                args, kwargs = function.payload.arguments(d.type, d.payload)
                if function.name in self.threaded:
                    result = await self.in_thread(function, ctx, args, kwargs, running.span)
                else:
                    # arq types ctx as a dict; ours is a JobContext that also answers ctx[...].
                    result = await function.coroutine(ctx, *args, **kwargs)  # type: ignore[arg-type]
            finally:
                running.deadline = None  # the timeout covers the handler, not our writes
        except asyncio.CancelledError:
            await self.outcomes.stopped(running, log, function, ctx, timeout_s)
            return
        except Exception as exc:
            await self.outcomes.failed(running, exc, function, ctx)
            return
        finally:
            if self.on_job_end:
                await self.on_job_end(self.worker_ctx)
        try:
            check_json(result, "result")
        except NotStrictJson as exc:
            # Retrying would return the same: a permanent failure that says why, not a lane
            # that dies encoding it, nor a stored value that no reader can encode again.
            error = PermanentError(f"the result cannot be stored: {exc}")
            await self.outcomes.failed(running, error, None, ctx)
            return
        self.outcomes.succeeded(running, result, ctx)

    async def in_thread(
        self,
        function: Function,
        ctx: JobContext,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        span: Span | None = None,
    ) -> Any:
        """A `def` handler blocks: a thread of the pool runs it, the loop stays free for
        leases, cancels, progress and other jobs. A thread cannot be cancelled: on a cancel or
        a timeout the job ends at once and `ctx.cancel_requested` tells the handler to stop.
        With the attempt's `span`, the thread runs in this task's context (as
        `asyncio.to_thread` would), so that spans the handler makes are the attempt's."""
        handler: Any = function.coroutine
        loop = asyncio.get_running_loop()
        in_thread = ThreadContext(ctx, loop)
        try:
            call = partial(handler, in_thread, *args, **kwargs)
            if span is not None:
                call = partial(contextvars.copy_context().run, call)
            return await loop.run_in_executor(self.threads, call)
        except asyncio.CancelledError:
            ctx.cancel_requested = True
            raise

    def context(self, running: Running, log: JobLog) -> JobContext:
        d = running.delivery

        async def report(percent: float | None, stage: str | None, message: str | None) -> None:
            if not await self.producer.progress(
                d.queue, d.job_id, d.attempt, percent, stage, message
            ):
                running.stop("lease_lost")

        storage = None
        if self.storage is not None:
            from consumers.storage import JobStorage

            storage = JobStorage(self.storage, d.queue, d.job_id)

        def steps() -> Steps:
            return Steps(
                self.producer,
                d,
                on_lease_lost=lambda: running.stop("lease_lost"),
                keep_artifact=storage.keep if storage is not None else lambda artifact: None,
                span=running.span,
            )

        async def submit(request: SubmitRequest, key: str) -> str:
            # A follow-up of a type this worker knows is checked as the gateway would check
            # it: a payload that cannot fit fails this job now (InvalidPayload), not the
            # follow-up later.
            for job in request.flow():
                handler = self.functions.get(job.type)
                if isinstance(handler, Handler):
                    handler.payload.arguments(job.type, job.payload)
            tenant = await self.producer.tenant_of(d.queue, d.job_id)
            # A follow-up's attempts join this one's trace, as children of its span.
            trace = tracing.context_of(running.span)
            submitted = await self.producer.submit(
                request, tenant=tenant, idempotency_key=key, trace=trace
            )
            return submitted.job_id

        return JobContext(
            job_id=d.job_id,
            queue=d.queue,
            job_type=d.type,
            attempt=d.attempt,
            worker_ctx=self.worker_ctx,
            report_progress=report,
            storage=storage,
            log=log,
            steps=steps,
            submit=submit,
            reserve=self.producer.reserve,
            min_progress_interval_s=self.progress_interval_s,
        )
