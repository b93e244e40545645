"""The consumer: an arq `Worker` whose fetch and ack path is a Redis Stream consumer group.

The seam with arq (0.28, pinned to its minor version in pyproject.toml), kept small:

Used as arq ships it
    `func()`/`Function` declarations (name, timeout, max_tries), `Retry(defer=...)`, the
    `ctx` dict with `on_startup`/`on_shutdown`/`on_job_start`/`on_job_end` hooks, signal
    handling with a grace period (`handle_sig_wait_for_completion`: stop fetching, let running
    jobs finish for `job_completion_wait`, then cancel), `run()`, `async_run()`, `close()`,
    `burst`, `max_jobs` as concurrency, the health-check key, and `__repr__`'s counters.

Overridden, because arq's versions read its sorted-set queue
    `main()`           the consumer loop: XREADGROUP, start scripts, run, finish scripts,
                       on the lanes described at `Lane`
    `record_health()`  reports the stream and this consumer instead of arq's zset
    `close()`          as arq's, but with redis-py 5's `aclose()` (arq calls the deprecated
                       `close()`) and without waiting on tasks that already ended
    `_sleep_until_tasks_complete()`  the graceful shutdown's wait, which must also cover a
                       batch between its fetch and its tasks

Not used (arq's sorted-set path, never called by the `main` here)
    `_poll_iteration`, `start_jobs`, `run_job`, `finish_job`, `finish_failed_job`,
    `_cancel_aborted_jobs`, `heart_beat`, `run_cron`.

Alongside the loop run small tasks: lease renewal, reclaiming idle entries of dead consumers,
promoting due delayed jobs, watching for cancel requests, stopping handlers past their
timeout, the heartbeat, the `on_failure` hooks (their runner is in consumers/hooks.py) and
the removal of consumers long gone (consumers/roster.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import random
import secrets
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

from arq.connections import ArqRedis
from arq.worker import Function, Retry, Worker
from redis.exceptions import BusyLoadingError, ConnectionError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from consumers import metrics, registry, roster
from consumers.context import JobContext
from consumers.hooks import FAILURE_GROUP, FailureHooks, failure_hook
from producer import Delivery, Lease, Producer
from producer.checks import note_stream_node_size, warn_if_evicting
from producer.connection import redis_from_url
from schemas.errors import PermanentError
from schemas.keys import CONSUMER_GROUP, QueueKeys
from schemas.models import Artifact
from schemas.settings import Settings
from schemas.strict_json import NotStrictJson, check_json

logger = logging.getLogger("conveyor.worker")
T = TypeVar("T")

TIMEOUT_SWEEP_S = 0.1  # a handler past its timeout is stopped within this
CANCEL_POLL_S = 0.5  # a cancel reaches a running handler within 1.5 polls (plus a trip)
HELPER_STOP_S = 2.0
REDIS_RETRY_S = 0.5
HEARTBEAT_S = 5.0
MAX_ERROR_CHARS = 2000


def logger_for(d: Delivery) -> JobLog:
    return JobLog(
        logger, {"job_id": d.job_id, "type": d.type, "attempt": d.attempt, "queue": d.queue}
    )


def entry_time_s(entry_id: str) -> float:
    """A stream entry id starts with the ms time Redis added it: the job's enqueue time."""
    return int(entry_id.partition("-")[0]) / 1000


def consumer_name() -> str:
    """Unique per process, readable in `XINFO CONSUMERS`: host, pid, and a random tail so a
    restarted process with a recycled pid is a new consumer."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def clear_own_cancel() -> None:
    """The job's task was cancelled by this worker (`Running.stop`) and goes on to record why:
    clear the cancel, or every later await in the task (that write included) would see a
    cancellation still pending."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


def backoff_ms(attempt: int, base_s: float, cap_s: float) -> int:
    """Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And
    Jitter"): spreads retries of jobs that failed together."""
    ceiling = min(cap_s, base_s * 2 ** max(0, attempt - 1))
    return int(random.uniform(0, ceiling) * 1000)


def describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    # A lone surrogate in a message (a payload's text echoed back) cannot reach Redis as UTF-8.
    return text[:MAX_ERROR_CHARS].encode("utf-8", "replace").decode()


class JobLog(logging.LoggerAdapter[logging.Logger]):
    """Binds a job's identity to every record, and (unlike the stdlib adapter before 3.13)
    keeps the fields a call adds, such as a completion's `stages`."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


LANES = 3


class Lane:
    """A share of the worker's slots, with its own loop that writes the share's finished jobs
    and takes new ones for its free slots in one round trip (`Producer.take`).

    Why several: one loop over every slot takes turns with Redis. It sends the batch's writes
    and next fetch, waits while Redis runs them, then runs the handlers while Redis idles;
    each side sat idle half the time (Redis 0.55 and the consumer 0.53 of a core in a drain).
    With lanes, Redis runs one lane's round trip while this process runs another lane's
    handlers. Separate loops keep that apart: a single loop that fetched twice as often fell
    into step with itself and took turns all the same. Why three: with two, Redis, which is
    the slower side of a drain, still idled a quarter of the time; a third lane in 14
    interleaved 20,000-job drains was 5-7% faster (median), a fourth no faster than three."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.busy = 0  # handlers running (or about to) in this lane
        self.finished: list[Running] = []  # succeeded, outcome not written yet
        self.wake = asyncio.Event()  # a handler ended, or the queue has work again

    @property
    def free(self) -> int:
        return self.slots - self.busy


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

    def stop(self, reason: str) -> None:
        if self.stop_reason is None and self.task is not None and not self.task.done():
            self.stop_reason = reason
            self.task.cancel()

    @property
    def lease(self) -> Lease:
        d = self.delivery
        return Lease(d.job_id, d.entry_id, d.attempt)


class ConveyorWorker(Worker):
    """Runs one queue's jobs. `await worker.async_run()` or `worker.run()`."""

    def __init__(
        self,
        settings: Settings,
        redis: ArqRedis,
        *,
        queue: str = "default",
        handlers: str | None = None,
        concurrency: int | None = None,
        burst: bool = False,
        handle_signals: bool = True,
        name: str | None = None,
    ) -> None:
        worker_settings = registry.load_worker_settings(handlers or settings.handlers)
        hooks: dict[str, Any] = {
            hook: getattr(worker_settings, hook, None)
            for hook in ("on_startup", "on_shutdown", "on_job_start", "on_job_end")
        }
        self.settings = settings
        self.queue = queue
        self.keys = QueueKeys(queue, settings.key_prefix)
        self.consumer = name or consumer_name()
        self.producer = Producer(redis, settings)
        super().__init__(
            functions=list(registry.functions(settings, handlers).values()),
            queue_name=queue,
            redis_pool=redis,
            burst=burst,
            handle_signals=handle_signals,
            job_completion_wait=int(settings.shutdown_grace_s),
            max_jobs=concurrency or settings.concurrency,
            job_timeout=settings.job_timeout_s,
            max_tries=settings.max_attempts,
            health_check_interval=max(1, int(settings.visibility_timeout_s)),
            health_check_key=f"{self.keys.base}:health:{self.consumer}",
            ctx={"settings": settings, "queue": queue},
            **hooks,
        )
        self.running: dict[str, Running] = {}
        lanes = min(LANES, self.max_jobs)
        self.lanes = [
            Lane(self.max_jobs // lanes + (i < self.max_jobs % lanes)) for i in range(lanes)
        ]
        # The queue looked empty to a lane: until the main loop reads something again with a
        # blocking XREADGROUP, lanes only write (a script cannot block).
        self._queue_empty = asyncio.Event()
        self._queue_empty.set()
        self._batches_in_flight = 0  # fetches between their read and their jobs' tasks
        self._work_changed = asyncio.Event()  # a job task ended or a batch was spawned
        self.jobs_cancelled = 0
        self.reclaimed = 0
        self.dead_lettered = 0
        self._slot_free = asyncio.Event()
        self._stopping = asyncio.Event()
        self._delayed_changed = asyncio.Event()  # a retry was scheduled here: promote sooner
        self._storage: Any = None

    # --- the loop ------------------------------------------------------------------------

    async def main(self) -> None:
        """While the queue has work, the lanes take it (see `Lane`). Once it looks empty, wait
        here on a blocking XREADGROUP for as many entries as there are free slots, start them
        with one round trip of start scripts, run each in its own task, and hand the queue
        back to the lanes. Until a signal (arq's handler clears `allow_pick_jobs`) or, in burst
        mode, until the queue is empty."""
        await self._startup()
        lanes = [asyncio.create_task(self._run_lane(lane)) for lane in self.lanes]
        helpers = [
            asyncio.create_task(loop())
            for loop in (
                self._renew_leases,
                self._reclaim,
                self._promote,
                self._watch_cancels,
                self._enforce_timeouts,
                self._compensate,
                self._forget_gone_consumers,
                self._heartbeat,
            )
        ]
        try:
            while self.allow_pick_jobs:
                if not self._queue_empty.is_set():
                    await self._queue_empty.wait()
                    continue
                free = self.max_jobs - self.busy_slots
                if free <= 0:
                    self._slot_free.clear()
                    await self._slot_free.wait()
                    continue
                self._batches_in_flight += 1
                try:
                    entries = await self._fetch(free)
                    for delivery in await self.producer.start(self.queue, entries, self.consumer):
                        self._spawn(delivery)
                    if entries:
                        self._queue_empty.clear()
                        self._wake_lanes()
                    elif self.burst and await self._drained():
                        break
                except RedisError as exc:
                    await self._redis_unavailable(exc)
                finally:
                    self._batches_in_flight -= 1
                    self._work_changed.set()
        finally:
            # The helpers stop on the flag; cancelling alone is not enough, since a cancel
            # that lands inside a redis-py call can be swallowed (seen with redis-py 5.3).
            self._stopping.set()
            self._delayed_changed.set()
            for helper in helpers:
                helper.cancel()
            await asyncio.wait(helpers, timeout=HELPER_STOP_S)
            if self.tasks:
                await asyncio.gather(*self.tasks.values(), return_exceptions=True)
            # The lanes write what finished, then end (they see `_stopping`).
            self._wake_lanes()
            await asyncio.wait(lanes)

    @property
    def busy_slots(self) -> int:
        """Running handlers: `running` less the jobs waiting for their outcome's write."""
        return sum(lane.busy for lane in self.lanes)

    def _wake_lanes(self) -> None:
        for lane in self.lanes:
            lane.wake.set()

    async def _run_lane(self, lane: Lane) -> None:
        """One lane's loop: write its finished jobs and take new ones for its free slots, one
        round trip each time, until the worker stops and the lane has nothing left to write.
        A lane stops taking when it finds the queue empty; `main` then waits for work."""
        while True:
            taking = self.allow_pick_jobs and not self._queue_empty.is_set()
            count = lane.free if taking and not self._stopping.is_set() else 0
            if not lane.finished and count <= 0:
                if self._stopping.is_set() and not lane.busy:
                    return
                lane.wake.clear()
                await lane.wake.wait()
                continue
            finished, lane.finished = lane.finished, []
            outcomes = [(r.delivery, *r.outcome) for r in finished if r.outcome]
            self._batches_in_flight += 1
            try:
                taken = await self._persist(
                    partial(self.producer.take, self.queue, self.consumer, count, outcomes)
                )
            except RedisError as exc:
                self._written(finished, None)
                logger.error("could not take or record jobs (%s)", describe(exc))
                await self._redis_unavailable(exc)
                continue
            finally:
                self._batches_in_flight -= 1
                self._work_changed.set()
            for delivery in taken.deliveries:
                self._spawn(delivery, lane)
            if taken.exhausted:
                self._queue_empty.set()
            self._written(finished, taken.written)

    def _written(self, finished: list[Running], written: list[bool] | None) -> None:
        """The outcomes of `finished` were written (True), fenced out (False), or could not
        be written (`written` is None: their leases lapse and other consumers retry them)."""
        outcomes: list[bool | None] = (
            list(written) if written is not None else [None] * len(finished)
        )
        for running, ok in zip(finished, outcomes, strict=True):
            d = running.delivery
            self.running.pop(d.job_id, None)
            log = logger_for(d)
            if ok:
                self.jobs_complete += 1
                metrics.labelled(metrics.JOBS, d.queue, d.type, "succeeded").inc()
                log.info("succeeded", extra=running.log_fields)
            elif ok is False:
                log.warning("succeeded, but the job was taken over meanwhile: result dropped")
        if finished:
            self._work_changed.set()

    async def _sleep_until_tasks_complete(self) -> None:
        """arq's wait before a graceful shutdown cancels the loop, counting a batch being
        fetched or started as running too. Cancelled in between, its entries would be left
        delivered (or its jobs `running`) with no handler until another consumer reclaimed
        them a visibility timeout later; let it finish instead (at most `block_ms`), and its
        jobs run within the grace period."""
        while self.running or self.tasks or self._batches_in_flight:
            self._work_changed.clear()
            await self._work_changed.wait()

    async def _redis_unavailable(self, exc: RedisError) -> None:
        """Redis restarted, failed over or is loading: wait and go on. Entries read but not
        started stay pending and are reclaimed; a group lost with a non-persistent Redis
        is created again."""
        if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
            logger.warning("consumer group missing (Redis lost its data?): creating it again")
            with contextlib.suppress(RedisError):
                await self.producer.ensure_group(self.queue)
            return
        logger.warning("Redis unavailable (%s); retrying in %.1fs", describe(exc), REDIS_RETRY_S)
        await self._pause(REDIS_RETRY_S)

    async def _startup(self) -> None:
        await self.producer.ensure_group(self.queue)
        await warn_if_evicting(self.pool)
        await note_stream_node_size(self.pool)
        logger.info(
            "consumer %s on queue %r: %d functions (%s), concurrency %d",
            self.consumer,
            self.queue,
            len(self.functions),
            ", ".join(self.functions),
            self.max_jobs,
        )
        self.ctx["redis"] = self.pool
        if self.settings.s3_endpoint:
            from consumers.storage import Storage

            self._storage = Storage.from_settings(self.settings)
            await self._storage.ensure_bucket()
        if self.on_startup:
            await self.on_startup(self.ctx)

    async def _fetch(self, count: int) -> list[tuple[str, str]]:
        """(entry id, job id) of up to `count` entries never delivered to any consumer."""
        reply = await self.pool.xreadgroup(
            CONSUMER_GROUP,
            self.consumer,
            {self.keys.jobs: ">"},
            count=count,
            block=self.settings.block_ms,
        )
        return [
            (entry_id, fields["job_id"]) for _, rows in reply or () for entry_id, fields in rows
        ]

    async def _drained(self) -> bool:
        """Burst mode's exit: nothing running here, nothing in the stream (undelivered or
        pending anywhere), nothing delayed."""
        if self.running:
            return False
        async with self.pool.pipeline(transaction=False) as pipe:
            pipe.xlen(self.keys.jobs)
            pipe.zcard(self.keys.delayed)
            stream_len, delayed = await pipe.execute()
        return int(stream_len) == 0 and int(delayed) == 0

    def _spawn(self, delivery: Delivery, lane: Lane | None = None) -> None:
        lane = lane or max(self.lanes, key=lambda lane: lane.free)
        running = Running(delivery, lane)
        self.running[delivery.job_id] = running
        lane.busy += 1
        task = asyncio.create_task(self._run(running), name=f"conveyor-job-{delivery.job_id}")
        running.task = task
        self.tasks[delivery.job_id] = task

        def forget(_: asyncio.Task[None]) -> None:
            self.tasks.pop(delivery.job_id, None)
            if running.outcome is None:  # else its lane writes it, then forgets it
                self.running.pop(delivery.job_id, None)
            self._work_changed.set()
            self._release_slot(running)

        task.add_done_callback(forget)

    def _release_slot(self, running: Running) -> None:
        """The job's handler is over: its slot may take the next job. A succeeded job gives
        it back before its outcome is written, so its lane takes the next job in the same
        round trip that writes this one. The job stays in `running` (leases, cancels) until
        written."""
        if running.holds_slot:
            running.holds_slot = False
            running.lane.busy -= 1
            running.lane.wake.set()
            self._slot_free.set()

    # --- one job ---------------------------------------------------------------------------

    async def _run(self, running: Running) -> None:
        """Run one delivery and record its outcome with one fenced script. The handler runs
        in this task: a cancel request, a lost lease, its timeout or a shutdown cancels the
        task, and `running.stop_reason` says which."""
        d = running.delivery
        function = self.functions.get(d.type)
        if not isinstance(function, Function):  # arq keeps cron jobs here too; we run none
            function = None
        log = logger_for(d)
        if function is None:
            error = PermanentError(f"no handler for job type {d.type!r} here")
            await self._fail(d, error, function)
            return
        ctx = self._context(running, log)
        timeout_s = d.timeout_s or function.timeout_s or self.job_timeout_s
        metrics.labelled(metrics.JOBS, d.queue, d.type, "started").inc()
        metrics.labelled(metrics.PICKUP, d.queue).observe(
            max(0.0, time.time() - entry_time_s(d.entry_id))
        )
        log.debug("started %s attempt %d", d.type, d.attempt)
        try:
            if self.on_job_start:
                await self.on_job_start(self.ctx)
            running.deadline = time.monotonic() + timeout_s  # see `_enforce_timeouts`
            try:
                # arq types ctx as a dict; ours is a JobContext that also answers ctx["name"].
                result = await function.coroutine(ctx, **d.payload)  # type: ignore[arg-type]
            finally:
                running.deadline = None  # the timeout covers the handler, not our writes
        except asyncio.CancelledError:
            if running.stop_reason != "timed_out":
                await self._stopped(running, log)
                return
            clear_own_cancel()
            await self._fail(d, TimeoutError(f"timed out after {timeout_s:g}s"), function, ctx)
            return
        except Exception as exc:
            await self._fail(d, exc, function, ctx)
            return
        finally:
            if self.on_job_end:
                await self.on_job_end(self.ctx)
        try:
            check_json(result, "result")
        except NotStrictJson as exc:
            # Retrying would return the same: a permanent failure that says why, not a lane
            # that dies encoding it, nor a stored value that no reader can encode again.
            await self._fail(d, PermanentError(f"the result cannot be stored: {exc}"), None, ctx)
            return
        duration_s, stages = ctx.timings()
        metrics.labelled(metrics.DURATION, d.queue, d.type).observe(duration_s)
        for artifact in ctx.artifacts:
            metrics.labelled(metrics.UPLOAD_BYTES, d.queue, d.type).inc(artifact.size)
        # Its lane writes the outcome with its next round trip (see `_run_lane`).
        running.outcome = (result, ctx.artifacts)
        running.log_fields = {"duration_s": duration_s, "stages": stages}
        running.lane.finished.append(running)
        self._release_slot(running)

    async def _stopped(self, running: Running, log: JobLog) -> None:
        """This job's task was cancelled: by a user's request, because the lease was lost,
        or because this worker is shutting down (then the entry stays pending for another
        consumer to reclaim, and the cancellation propagates)."""
        d = running.delivery
        if running.stop_reason is None:
            log.info("shutting down: left pending for another consumer to reclaim")
            raise asyncio.CancelledError
        clear_own_cancel()
        if running.stop_reason == "cancelled":
            if await self._persist(lambda: self.producer.cancelled(d, "cancelled by request")):
                self.jobs_cancelled += 1
                metrics.labelled(metrics.JOBS, d.queue, d.type, "cancelled").inc()
                log.info("cancelled by request")
        else:
            log.warning("lease lost to another consumer; stopped without writing")

    async def _fail(
        self,
        d: Delivery,
        exc: BaseException,
        function: Function | None,
        ctx: JobContext | None = None,
    ) -> None:
        retryable = not isinstance(exc, PermanentError)
        if isinstance(exc, Retry) and exc.defer_score is not None:
            delay_ms = int(exc.defer_score)
        else:
            delay_ms = backoff_ms(
                d.attempt, self.settings.backoff_base_s, self.settings.backoff_max_s
            )
        max_tries = (function.max_tries if function else None) or self.max_tries
        outcome = await self._persist(
            lambda: self.producer.fail(
                d,
                describe(exc),
                retryable=retryable,
                backoff_ms=delay_ms,
                default_max_attempts=max_tries,
            )
        )
        duration_s, stages = ctx.timings() if ctx else (0.0, {})
        record = {"error": describe(exc), "duration_s": duration_s, "stages": stages}
        if outcome == "retrying":
            self.jobs_retried += 1
            self._delayed_changed.set()
            metrics.labelled(metrics.JOBS, d.queue, d.type, "retried").inc()
            logger_for(d).info("failed, will retry in %.1fs", delay_ms / 1000, extra=record)
        elif outcome == "failed":
            self.jobs_failed += 1
            metrics.labelled(metrics.JOBS, d.queue, d.type, "failed").inc()
            metrics.labelled(metrics.DEAD_LETTERED, d.queue, "handler_error").inc()
            logger_for(d).warning("failed and dead-lettered", extra=record)

    async def _persist(self, write: Callable[[], Awaitable[T]]) -> T:
        """Make a job's final write survive a Redis restart or failover: retry on connection
        errors for up to a visibility timeout. Past that another consumer may own the job,
        and the fenced script would refuse the write anyway."""
        deadline = time.monotonic() + self.settings.visibility_timeout_s
        while True:
            try:
                return await write()
            except (ConnectionError, RedisTimeoutError, BusyLoadingError) as exc:
                if time.monotonic() > deadline:
                    raise
                logger.warning("final write failed (%s); retrying", describe(exc))
                await asyncio.sleep(REDIS_RETRY_S)

    def _context(self, running: Running, log: JobLog) -> JobContext:
        d = running.delivery

        async def report(percent: float | None, stage: str | None, message: str | None) -> None:
            if not await self.producer.progress(
                d.queue, d.job_id, d.attempt, percent, stage, message
            ):
                running.stop("lease_lost")

        storage = None
        if self._storage is not None:
            from consumers.storage import JobStorage

            storage = JobStorage(self._storage, d.queue, d.job_id)
        return JobContext(
            job_id=d.job_id,
            queue=d.queue,
            job_type=d.type,
            attempt=d.attempt,
            worker_ctx=self.ctx,
            report_progress=report,
            storage=storage,
            log=log,
            min_progress_interval_s=self.settings.progress_interval_s,
        )

    # --- the helpers beside the loop --------------------------------------------------------

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once when the worker stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _every(self, interval_s: float, step: Callable[[], Awaitable[None]]) -> None:
        """Run `step` every `interval_s` until the worker stops, surviving errors (Redis
        restarts, timeouts)."""
        while not self._stopping.is_set():
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("%s failed; retrying in %.1fs", step.__name__, interval_s)
            await self._pause(interval_s)

    async def _renew_leases(self) -> None:
        async def renew() -> None:
            running = list(self.running.values())
            states = await self.producer.renew(
                self.queue, self.consumer, [r.lease for r in running]
            )
            for r, state in zip(running, states, strict=True):
                if not state.held:
                    r.stop("lease_lost")
                elif state.cancel_requested:
                    r.stop("cancelled")

        await self._every(self.settings.lease_renew_interval_s, renew)

    async def _watch_cancels(self) -> None:
        """Poll the cancel flag of the jobs that have run for half a poll or more: a cancel
        still reaches its handler within 1.5 polls of the request. Most jobs of a busy worker
        end younger than that, and polling every running job cost a no-op drain 6% of the
        consumer's time (py-spy)."""

        async def watch() -> None:
            settled = time.monotonic() - CANCEL_POLL_S / 2
            job_ids = [job_id for job_id, r in self.running.items() if r.since <= settled]
            for job_id in await self.producer.cancel_requested(self.queue, job_ids):
                if job_id in self.running:
                    self.running[job_id].stop("cancelled")

        await self._every(CANCEL_POLL_S, watch)

    async def _enforce_timeouts(self) -> None:
        """Stop the handlers past their deadline, as a cancel does (reason `timed_out`). One
        sweep of the running jobs every TIMEOUT_SWEEP_S, rather than a timer per job: arming
        and disarming asyncio.timeout, then a loop timer, were 10% and 6% of the consumer's
        time in a no-op drain (py-spy)."""

        async def sweep() -> None:
            now = time.monotonic()
            for running in list(self.running.values()):
                if running.deadline is not None and running.deadline <= now:
                    running.stop("timed_out")

        await self._every(TIMEOUT_SWEEP_S, sweep)

    async def _reclaim(self) -> None:
        async def reclaim() -> None:
            free = self.max_jobs - self.busy_slots
            if free <= 0 or not self.allow_pick_jobs:
                return
            report = await self.producer.reclaim(
                self.queue,
                self.consumer,
                min_idle_ms=int(self.settings.visibility_timeout_s * 1000),
                max_deliveries=self.settings.max_deliveries,
                count=free,
            )
            self.dead_lettered += len(report.dead)
            metrics.labelled(metrics.DEAD_LETTERED, self.queue, "poison").inc(len(report.dead))
            for delivery in report.deliveries:
                self.reclaimed += 1
                metrics.labelled(metrics.RECLAIMED, self.queue).inc()
                logger.warning("reclaimed job %s (attempt %d)", delivery.job_id, delivery.attempt)
                self._spawn(delivery)

        await self._every(self.settings.reclaim_interval_s, reclaim)

    async def _promote(self) -> None:
        """Move due delayed jobs to the stream; sleep until the next is due (at most 1 s, so a
        job delayed by another process is not missed for long), or until this worker
        schedules a retry."""
        while not self._stopping.is_set():
            self._delayed_changed.clear()
            try:
                _, next_due_ms = await self.producer.promote(self.queue)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("promote failed")
                next_due_ms = None
            wait_s = 1.0
            if next_due_ms is not None:
                wait_s = min(1.0, max(0.01, next_due_ms / 1000 - time.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._delayed_changed.wait(), wait_s)

    async def _heartbeat(self) -> None:
        """Mark this consumer alive (for `conveyor inspect` and the cleanup of gone consumers)
        and refresh arq's health-check key. Its own loop: a consumer whose slots are all busy
        with long jobs does not fetch, and must not look dead."""

        async def beat() -> None:
            await roster.mark_seen(self.pool, self.keys, self.consumer)
            await self.record_health()

        await self._every(HEARTBEAT_S, beat)

    async def _compensate(self) -> None:
        """Run `on_failure` hooks for this queue's failed jobs (see consumers/hooks.py)."""
        hooks = {
            name: hook
            for name, function in self.functions.items()
            if isinstance(function, Function) and (hook := failure_hook(function.coroutine))
        }
        if not hooks:
            return
        await self.producer.ensure_group(self.queue, FAILURE_GROUP)
        runner = FailureHooks(
            self.pool,
            self.producer,
            self.keys,
            self.consumer,
            hooks,
            self.ctx,
            reclaim_idle_ms=int(self.settings.visibility_timeout_s * 1000),
        )
        await self._every(0.1, runner.run_pending)  # paced by its 1 s block when idle

    async def _forget_gone_consumers(self) -> None:
        idle_s = self.settings.consumer_idle_cleanup_s

        async def forget() -> None:
            await roster.forget_gone_consumers(self.pool, self.keys, self.consumer, idle_s)

        await self._every(min(60.0, idle_s), forget)

    # --- arq hooks ---------------------------------------------------------------------------

    async def record_health(self) -> None:
        now = time.time()
        if now - self._last_health_check < self.health_check_interval:
            return
        self._last_health_check = now
        info = (
            f"{time.strftime('%b-%d %H:%M:%S')} j_complete={self.jobs_complete} "
            f"j_failed={self.jobs_failed} j_retried={self.jobs_retried} "
            f"j_ongoing={len(self.running)} reclaimed={self.reclaimed}"
        )
        await self.pool.psetex(
            self.health_check_key, int((self.health_check_interval + 1) * 1000), info
        )

    async def close(self) -> None:
        if not self._handle_signals:
            self.handle_sig(signal.SIGUSR1)
        if not self._pool:
            return
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        await self.pool.delete(self.health_check_key)
        if self.on_shutdown:
            await self.on_shutdown(self.ctx)
        await self.pool.aclose()
        self._pool = None
        if self._storage is not None:
            self._storage.close()

    def __repr__(self) -> str:
        return (
            f"<ConveyorWorker {self.consumer} queue={self.queue} j_complete={self.jobs_complete} "
            f"j_failed={self.jobs_failed} j_retried={self.jobs_retried} "
            f"j_cancelled={self.jobs_cancelled} reclaimed={self.reclaimed} "
            f"dead_lettered={self.dead_lettered} j_ongoing={len(self.running)}>"
        )


def connect(settings: Settings, block_ms: int | None = None) -> ArqRedis:
    """A client for a worker: its socket timeout outlasts the blocking XREADGROUP."""
    if not settings.redis_url:
        raise RuntimeError(
            "CONVEYOR_REDIS_URL is not set (`conveyor run` starts an embedded Redis)"
        )
    block_s = (block_ms or settings.block_ms) / 1000
    # Any CONVEYOR_REDIS_URL form (Sentinel, Cluster too); see producer.connection.
    return redis_from_url(
        settings.redis_url,
        redis_class=ArqRedis,
        socket_timeout=block_s + 10,
        socket_connect_timeout=5,
        health_check_interval=30,
        retry_on_timeout=True,
    )


def run_worker(
    settings: Settings,
    *,
    queue: str = "default",
    concurrency: int | None = None,
    burst: bool = False,
    handlers: str | None = None,
) -> int:
    """`conveyor worker`: run until SIGTERM/SIGINT (or until drained with `burst`)."""
    if settings.worker_metrics_port:
        metrics.serve(settings.worker_metrics_port, settings.host)
    worker = ConveyorWorker(
        settings,
        connect(settings),
        queue=queue,
        handlers=handlers,
        concurrency=concurrency,
        burst=burst,
    )
    # Everything imported and built so far lives as long as the process: move it out of the
    # collector's sight, so the full collections that the jobs' short-lived objects trigger
    # do not walk it again each time (they were a tenth of a consumer's CPU at full load).
    gc.freeze()
    worker.run()
    logger.info("stopped: %r", worker)
    return 0
