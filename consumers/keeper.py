"""What a worker does from a thread of its own, so that an event loop blocked by a handler (a
sync HTTP client, `subprocess.run`, a CPU-bound model) neither loses its jobs' leases nor goes
unnoticed.

Leases. Renewing them from the event loop failed exactly when it mattered: a handler that
blocked the loop for 8 s with a 3 s visibility timeout was reclaimed twice and dead-lettered
as poison, although every run would have succeeded. The keeper renews every
`lease_renew_interval_s` on its own connection and hands the verdicts (lease lost, cancel
requested) to the loop, which acts on them when it is free. It stops renewing a job once its
handler is `lease_grace_s` past its timeout: a handler that hangs for good is still reclaimed,
and its late result fenced out.

The loop. The loop marks a beat every BEAT_S and records how late each beat came
(`conveyor_worker_loop_lag_seconds`). When no beat has come for `loop_stall_warn_s`, the
keeper logs the job whose task holds the loop and the stack it is blocked in, counts the
stall (`conveyor_worker_loop_stalls_total`) and writes it into the worker's health-check key,
which the blocked loop cannot refresh itself.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING

from consumers import metrics
from producer import LeaseState, Producer
from producer.connection import redis_from_url

if TYPE_CHECKING:
    from consumers.execution import Running
    from consumers.worker import ConveyorWorker

logger = logging.getLogger("conveyor.worker")

BEAT_S = 0.1  # the loop's beat: lag is measured to within this
WATCH_S = 0.2  # how often the keeper looks at the beat
JOB_TASK_PREFIX = "conveyor-job-"  # tasks are named after their job (lanes.py)


class Keeper:
    """The worker's own thread: lease renewal and the loop watch."""

    def __init__(self, worker: ConveyorWorker) -> None:
        self.settings = worker.settings
        self.queue = worker.queue
        self.consumer = worker.consumer
        self.running = worker.running
        self.health_check_key = worker.health_check_key
        self.stalls = 0
        self.longest_stall_s = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._beat = time.monotonic()
        self._next_beat = self._beat
        self._timer: asyncio.TimerHandle | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._on_beat()
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._main(),), name="conveyor-keeper", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.cancel()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # --- on the event loop ------------------------------------------------------------------

    def _on_beat(self) -> None:
        assert self._loop is not None
        now = time.monotonic()
        metrics.LOOP_LAG.observe(max(0.0, now - self._next_beat))
        self._beat = now
        self._next_beat = now + BEAT_S
        self._timer = self._loop.call_later(BEAT_S, self._on_beat)

    def _apply(self, running: list[Running], states: list[LeaseState]) -> None:
        for r, state in zip(running, states, strict=True):
            if not state.held:
                r.stop("lease_lost")
            elif state.cancel_requested:
                r.stop("cancelled")

    # --- on the keeper's thread -------------------------------------------------------------

    async def _main(self) -> None:
        assert self.settings.redis_url is not None
        redis = redis_from_url(
            self.settings.redis_url,
            socket_timeout=self.settings.redis_timeout_s,
            socket_connect_timeout=self.settings.redis_timeout_s,
        )
        store = Producer(redis, self.settings)
        renew_due = time.monotonic() + self.settings.lease_renew_interval_s
        reported = False
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= renew_due:
                    renew_due = now + self.settings.lease_renew_interval_s
                    await self._renew(store, now)
                blocked_s = now - self._beat - BEAT_S
                if blocked_s >= self.settings.loop_stall_warn_s:
                    self.longest_stall_s = max(self.longest_stall_s, blocked_s)
                    if not reported:
                        reported = True
                        self.stalls += 1
                        metrics.LOOP_STALLS.inc()
                        await self._report_stall(store, blocked_s)
                else:
                    reported = False
                await asyncio.sleep(WATCH_S)  # a period: what it watches cannot wake it
        finally:
            await redis.aclose()

    async def _renew(self, store: Producer, now: float) -> None:
        """Renew the leases of the jobs whose handlers are within their timeout plus the
        grace (or have not started, or finished and wait for their write)."""
        grace = self.settings.lease_grace_s
        running = [
            r
            for r in self.running.copy().values()  # copy(): one atomic step under the GIL
            if r.deadline is None or now <= r.deadline + grace
        ]
        if not running:
            return
        try:
            states = await store.renew(self.queue, self.consumer, [r.lease for r in running])
        except Exception as exc:  # Redis away: the next round tries again, as the loop did
            logger.warning("lease renewal failed: %s: %s", type(exc).__name__, exc)
            return
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._apply, running, states)

    async def _report_stall(self, store: Producer, blocked_s: float) -> None:
        assert self._loop is not None
        task = asyncio.current_task(self._loop)
        name = task.get_name() if task is not None else ""
        job_id = name.removeprefix(JOB_TASK_PREFIX) if name.startswith(JOB_TASK_PREFIX) else None
        running = self.running.get(job_id) if job_id else None
        job = f"job {job_id} ({running.delivery.type})" if running else "no job (worker code)"
        frame = sys._current_frames().get(self._loop_thread)
        stack = "".join(traceback.format_stack(frame)) if frame is not None else "(no stack)"
        logger.warning(
            "event loop blocked for %.1fs by %s; leases are kept from the keeper thread. "
            "Run blocking work in a `def` handler or ctx.run_process. Blocked in:\n%s",
            blocked_s,
            job,
            stack,
            extra={"job_id": job_id, "blocked_s": round(blocked_s, 3)},
        )
        info = f"{time.strftime('%b-%d %H:%M:%S')} STALLED event loop blocked by {job}"
        try:
            ttl_s = self.settings.visibility_timeout_s + 1
            await store.record_health(self.health_check_key, ttl_s, info)
        except Exception as exc:
            logger.warning("could not report the stall in the health check: %s", exc)
