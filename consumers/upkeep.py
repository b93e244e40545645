"""The queue's upkeep that every consumer shares in, beside its own jobs: reclaiming the
entries of consumers that died, promoting delayed jobs that came due, running the
`on_failure` hooks of failed jobs (consumers/hooks.py), its heartbeat, and removing consumers
gone for long. Any consumer may do each; the scripts make it safe for
many to do it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from arq.worker import Function

from consumers import metrics
from consumers.hooks import FailureHooks, failure_hook
from consumers.periodic import every, pause
from schemas import tracing
from schemas.keys import FAILURE_GROUP, FLOW_GROUP

if TYPE_CHECKING:
    from consumers.lanes import Lanes
    from consumers.worker import ConveyorWorker

logger = logging.getLogger("conveyor.worker")

HEARTBEAT_S = 5.0
REDIS_RETRY_S = 0.5


class Upkeep:
    """The upkeep loops of one consumer. They read the worker as they go (none is on a job's
    path) and count on it: `reclaimed`, `dead_lettered`."""

    def __init__(self, worker: ConveyorWorker, lanes: Lanes) -> None:
        self.worker = worker
        self.lanes = lanes

    async def reclaim(self) -> None:
        w = self.worker

        async def reclaim() -> None:
            free = self.lanes.free
            if free <= 0 or not w.allow_pick_jobs or await w.producer.paused(w.queue):
                return
            report = await w.producer.reclaim(
                w.queue,
                w.consumer,
                min_idle_ms=int(w.settings.visibility_timeout_s * 1000),
                max_deliveries=w.settings.max_deliveries,
                count=free,
                traced=tracing.active(),
                gates=w.gates,
            )
            w.dead_lettered += len(report.dead)
            metrics.labelled(metrics.DEAD_LETTERED, w.queue, "poison").inc(len(report.dead))
            for delivery in report.deliveries:
                w.reclaimed += 1
                metrics.labelled(metrics.RECLAIMED, w.queue).inc()
                logger.warning("reclaimed job %s (attempt %d)", delivery.job_id, delivery.attempt)
                self.lanes.spawn(delivery)

        await every(w.stopping, w.settings.reclaim_interval_s, reclaim)

    async def promote(self) -> None:
        """Move due delayed jobs to the stream; sleep until the next is due (at most 1 s, so a
        job delayed by another process is not missed for long), or until this worker
        schedules a retry."""
        w = self.worker
        while not w.stopping.is_set():
            w.delayed_changed.clear()
            try:
                _, next_due_ms = await w.producer.promote(w.queue)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("promote failed")
                next_due_ms = None
            wait_s = 1.0
            if next_due_ms is not None:
                wait_s = min(1.0, max(0.01, next_due_ms / 1000 - time.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(w.delayed_changed.wait(), wait_s)

    async def heartbeat(self) -> None:
        """Mark this consumer alive (for `conveyor inspect` and the cleanup of gone consumers)
        and refresh arq's health-check key. Its own loop: a consumer whose slots are all busy
        with long jobs does not fetch, and must not look dead."""
        w = self.worker

        async def beat() -> None:
            await w.producer.mark_seen(w.queue, w.consumer)
            await w.record_health()

        await every(w.stopping, HEARTBEAT_S, beat)

    async def run_failure_hooks(self) -> None:
        """Run `on_failure` hooks for this queue's failed jobs (see consumers/hooks.py)."""
        w = self.worker
        hooks = {
            name: hook
            for name, function in w.functions.items()
            if isinstance(function, Function) and (hook := failure_hook(function.coroutine))
        }
        if not hooks:
            return
        await w.producer.ensure_group(w.queue, FAILURE_GROUP)
        runner = FailureHooks(
            w.producer,
            w.queue,
            w.consumer,
            hooks,
            w.ctx,
            reclaim_idle_ms=int(w.settings.visibility_timeout_s * 1000),
        )
        await every(w.stopping, 0.1, runner.run_pending)  # paced by its 1 s block when idle

    async def carry_flow_tasks(self) -> None:
        """Carry the queue's flow tasks (producer/flows.py): tell parents their children
        ended, cancel the children of cancelled or failed parents; and now and then check
        that the children of long-waiting parents exist. Blocks on the flow stream, so a
        parent is released as soon as its last child's end is written."""
        w = self.worker
        flows = w.producer.flows
        await w.producer.ensure_group(w.queue, FLOW_GROUP)
        check_every_s = min(5.0, w.settings.flow_check_s)
        next_check = 0.0
        while not w.stopping.is_set():
            try:
                await flows.carry(
                    w.queue,
                    w.consumer,
                    block_ms=w.settings.block_ms,
                    reclaim_idle_ms=int(w.settings.visibility_timeout_s * 1000),
                )
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + check_every_s
                    await flows.check_waiting(w.queue)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("flow tasks failed; retrying in %.1fs", REDIS_RETRY_S)
                await pause(w.stopping, REDIS_RETRY_S)

    async def forget_gone_consumers(self) -> None:
        w = self.worker
        idle_s = w.settings.consumer_idle_cleanup_s

        async def forget() -> None:
            for gone in await w.producer.forget_gone_consumers(w.queue, w.consumer, idle_s):
                logger.info("removed consumer %s (gone)", gone)

        await every(w.stopping, min(60.0, idle_s), forget)
