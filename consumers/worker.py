"""The consumer: an arq `Worker` whose fetch and ack path is a Redis Stream consumer group.

`ConveyorWorker` is the process's lifecycle and its seam with arq; what it runs is composed
from one module per concern:

    consumers/lanes.py        the consumer loop: slots in lanes, each lane writing its finished
                              jobs and taking new ones in one round trip; the blocking read
                              that waits for work while the queue looks empty
    consumers/execution.py    one delivery: `Running`, the handler call in its task, its ctx
    consumers/outcomes.py     how an attempt ends: succeeded, retrying, failed, cancelled,
                              lease lost; every ending leaves through `Outcomes`
    consumers/supervision.py  beside the running jobs: cancel watch, timeouts
    consumers/keeper.py       the worker's own thread: lease renewal and the loop-stall watch,
                              so a handler that blocks the loop neither loses its lease nor
                              goes unnoticed
    consumers/children.py     `ctx.run_process` / `ctx.run_command`: child processes with
                              kernel limits, killed with their process group
    consumers/upkeep.py       beside the queue: reclaim, promotion, heartbeat, `on_failure`
                              hooks (consumers/hooks.py), removal of gone consumers
    consumers/periodic.py     how the loops beside the consumer loop run and stop

The seam with arq (0.28, pinned to its minor version in pyproject.toml), kept small:

Used as arq ships it
    `func()`/`Function` declarations (name, timeout, max_tries; consumers/registry.py's
    `Handler` is a `Function` that also carries its payload model), `Retry(defer=...)` (its
    `defer_score`), the `ctx` dict with `on_startup`/`on_shutdown`/`on_job_start`/
    `on_job_end` hooks, signal handling with a grace period (`handle_sig_wait_for_completion`:
    clear `allow_pick_jobs`, let running jobs finish for `job_completion_wait`, then cancel
    `tasks` and `main_task`; `handle_sig` cancels at once), `run()`, `async_run()`, `burst`,
    `max_jobs` as concurrency, `max_tries`, `job_timeout_s`, the health-check key and
    interval, the `pool` property, and the counters `jobs_complete`, `jobs_failed` and
    `jobs_retried` that its signal handlers log. Job tasks go in arq's `tasks`, so its signal
    handlers cancel them.

Overridden, because arq's versions read its sorted-set queue
    `main()`           the consumer loop (consumers/lanes.py) and the loops beside it
    `record_health()`  reports the stream and this consumer instead of arq's zset
    `close()`          as arq's, but with redis-py 5's `aclose()` (arq calls the deprecated
                       `close()`), without waiting on tasks that already ended, and closing
                       the S3 client
    `__repr__()`       counts cancels, reclaims and dead letters too

The one private arq name still used
    `_sleep_until_tasks_complete()`  overridden: the wait inside arq's graceful shutdown
                       (`handle_sig_wait_for_completion` calls `_wait_for_tasks_to_complete`,
                       which runs it under `job_completion_wait`), which here must also cover
                       a batch between its fetch and its tasks. arq offers no public hook for
                       it; overriding the public `handle_sig_wait_for_completion` instead
                       would copy arq's wait, its log lines and its cancelling, and read the
                       private `_job_completion_wait` all the same.

Not used (arq's sorted-set path, never called by the `main` here)
    `_poll_iteration`, `start_jobs`, `run_job`, `finish_job`, `finish_failed_job`,
    `_cancel_aborted_jobs`, `heart_beat`, `run_cron`, and `run_check` (it reads arq's job
    results, which Conveyor does not write).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import secrets
import signal
import socket
import time
from typing import Any

from arq.connections import ArqRedis
from arq.worker import Worker

from consumers import metrics, registry
from consumers.callbacks import Callbacks
from consumers.children import kill_all_children
from consumers.errors import MAX_ERROR_CHARS, describe
from consumers.execution import (
    JobLog,
    Runner,
    Running,
    clear_own_cancel,
    logger_for,
)
from consumers.keeper import Keeper
from consumers.lanes import LANES, Lane, Lanes
from consumers.outcomes import REDIS_RETRY_S, Outcomes, backoff_ms
from consumers.scheduling import Scheduler
from consumers.supervision import CANCEL_POLL_S, TIMEOUT_SWEEP_S, Supervision
from consumers.upkeep import HEARTBEAT_S, Upkeep
from producer import Producer
from producer.checks import note_stream_node_size, warn_if_evicting
from producer.connection import redis_from_url
from schemas.gates import gates_argument
from schemas.settings import Settings
from schemas.stream_id import entry_time_s

# The worker module held all of these before it was split; they are still importable from it.
__all__ = [
    "CANCEL_POLL_S",
    "HEARTBEAT_S",
    "HELPER_STOP_S",
    "LANES",
    "MAX_ERROR_CHARS",
    "REDIS_RETRY_S",
    "TIMEOUT_SWEEP_S",
    "ConveyorWorker",
    "JobLog",
    "Lane",
    "Running",
    "backoff_ms",
    "clear_own_cancel",
    "connect",
    "consumer_name",
    "describe",
    "entry_time_s",
    "logger_for",
    "run_worker",
]

logger = logging.getLogger("conveyor.worker")

HELPER_STOP_S = 2.0
GC_YOUNG_THRESHOLD = 10_000  # a worker's first collector threshold (see run_worker)


def consumer_name() -> str:
    """Unique per process, readable in `XINFO CONSUMERS`: host, pid, and a random tail so a
    restarted process with a recycled pid is a new consumer."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


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
        self.handlers = handlers
        self.queue = queue
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
            health_check_key=self.producer.keys(queue).health(self.consumer),
            ctx={"settings": settings, "queue": queue},
            **hooks,
        )
        self.handles_signals = handle_signals  # arq's own copy is private; `close` reads this
        # The gated types' rate limits and caps, as the start scripts take them (schemas/gates)
        self.gates = gates_argument(
            {name: getattr(f, "gate", None) for name, f in self.functions.items()}
        )
        self.jobs_cancelled = 0
        self.reclaimed = 0
        self.dead_lettered = 0
        self.running: dict[str, Running] = {}  # by job id, until its outcome is written
        self.stopping = asyncio.Event()  # set as `main` ends: the lanes and the loops beside end
        # A retry was scheduled here, or a job held at a rate gate: promote sooner
        self.delayed_changed = asyncio.Event()
        outcomes = Outcomes(self)
        self.runner = Runner(self, outcomes)
        self.lanes = Lanes(self, self.runner, outcomes)
        self.supervision = Supervision(self)
        self.keeper = Keeper(self)
        self.upkeep = Upkeep(self, self.lanes)
        self.callbacks = Callbacks(self)
        self.scheduler = Scheduler(self)
        self._health_recorded_at = 0.0  # `record_health`'s throttle (arq's is private)
        self._closed = False

    async def main(self) -> None:
        """The consumer loop (`Lanes.run`, until a signal or, in burst mode, until the queue
        is empty), with the loops that watch its jobs and keep the queue beside it."""
        await self._startup()
        self.keeper.start()
        self.lanes.start()
        beside = [
            asyncio.create_task(loop())
            for loop in (
                self.upkeep.reclaim,
                self.upkeep.promote,
                self.supervision.watch_cancels,
                self.supervision.enforce_timeouts,
                self.upkeep.run_failure_hooks,
                self.upkeep.carry_flow_tasks,
                self.callbacks.run,
                self.scheduler.run,
                self.upkeep.forget_gone_consumers,
                self.upkeep.heartbeat,
            )
        ]
        try:
            await self.lanes.run()
        finally:
            # The loops beside stop on the flag; cancelling alone is not enough, since a
            # cancel that lands inside a redis-py call can be swallowed (seen with redis-py
            # 5.3).
            self.stopping.set()
            self.delayed_changed.set()
            for task in beside:
                task.cancel()
            await asyncio.wait(beside, timeout=HELPER_STOP_S)
            if self.tasks:
                await asyncio.gather(*self.tasks.values(), return_exceptions=True)
            self.keeper.stop()
            await self.lanes.close()

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

            storage = Storage.from_settings(self.settings)
            self.runner.storage = storage
            await storage.ensure_bucket()
        if self.on_startup:
            await self.on_startup(self.ctx)

    async def _sleep_until_tasks_complete(self) -> None:
        """arq's wait before a graceful shutdown cancels the loop, counting a batch being
        fetched or started as running too. Cancelled in between, its entries would be left
        delivered (or its jobs `running`) with no handler until another consumer reclaimed
        them a visibility timeout later; let it finish instead (at most `block_ms`), and its
        jobs run within the grace period."""
        await self.lanes.wait_until_idle()

    async def record_health(self) -> None:
        now = time.time()
        if now - self._health_recorded_at < self.health_check_interval:
            return
        self._health_recorded_at = now
        info = (
            f"{time.strftime('%b-%d %H:%M:%S')} j_complete={self.jobs_complete} "
            f"j_failed={self.jobs_failed} j_retried={self.jobs_retried} "
            f"j_ongoing={len(self.running)} reclaimed={self.reclaimed} "
            f"loop_stalls={self.keeper.stalls} longest_stall_s={self.keeper.longest_stall_s:.1f}"
        )
        await self.producer.record_health(
            self.health_check_key, self.health_check_interval + 1, info
        )

    async def close(self) -> None:
        if not self.handles_signals:
            self.handle_sig(signal.SIGUSR1)
        if self._closed:
            return
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        kill_all_children()  # what a handler started and did not see end: no orphans
        self.runner.close()
        await self.pool.delete(self.health_check_key)
        if self.on_shutdown:
            await self.on_shutdown(self.ctx)
        await self.pool.aclose()
        self._closed = True
        if self.runner.storage is not None:
            self.runner.storage.close()

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
    # A job's objects die by reference counting, not by the collector, but the young
    # generation's count is allocations less frees, floored at zero: each batch of jobs
    # started counts again from there, and at the default 700 a 20,000-job drain ran 435
    # young collections and 39 middle ones, each walking the jobs then in flight (3-8 us a
    # job, 6-14% of a no-op job's CPU). At 10,000 such a drain runs none; a handler that
    # makes cyclic garbage has it collected after 10,000 allocations instead of 700.
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    worker.run()
    logger.info("stopped: %r", worker)
    return 0
