"""Watching the jobs this consumer runs, from beside them: a handler is stopped when its job's
cancel is requested or it runs past its timeout. (Leases are renewed from the worker's own
thread, consumers/keeper.py, so that a blocked loop does not lose them.) Each is one loop over
all running jobs rather than a timer or a call per job: per-job work is what a busy consumer
pays for most (see each loop's note).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from consumers.periodic import every

if TYPE_CHECKING:
    from consumers.worker import ConveyorWorker

TIMEOUT_SWEEP_S = 0.1  # a handler past its timeout is stopped within this
CANCEL_POLL_S = 0.5  # a cancel reaches a running handler within 1.5 polls (plus a trip)


class Supervision:
    """The loops that stop a running job's handler (`Running.stop`)."""

    def __init__(self, worker: ConveyorWorker) -> None:
        self.running = worker.running
        self.producer = worker.producer
        self.queue = worker.queue
        self.stopping = worker.stopping

    async def watch_cancels(self) -> None:
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

        await every(self.stopping, CANCEL_POLL_S, watch)

    async def enforce_timeouts(self) -> None:
        """Stop the handlers past their deadline, as a cancel does (reason `timed_out`). One
        sweep of the running jobs every TIMEOUT_SWEEP_S, rather than a timer per job: arming
        and disarming asyncio.timeout, then a loop timer, were 10% and 6% of the consumer's
        time in a no-op drain (py-spy)."""

        async def sweep() -> None:
            now = time.monotonic()
            for running in list(self.running.values()):
                if running.deadline is not None and running.deadline <= now:
                    running.stop("timed_out")

        await every(self.stopping, TIMEOUT_SWEEP_S, sweep)
