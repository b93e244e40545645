"""The consumer loop: the worker's slots, split into lanes that take jobs off the queue and
write the finished ones back, and the blocking read that waits for work once the queue looks
empty. Each job runs in its own task (consumers/execution.py) in one slot of one lane.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from functools import partial
from typing import TYPE_CHECKING

from redis.exceptions import RedisError, ResponseError

from consumers.errors import describe
from consumers.execution import Running
from consumers.keeper import JOB_TASK_PREFIX
from consumers.outcomes import REDIS_RETRY_S, persist
from consumers.periodic import pause
from producer import Delivery
from producer.producer import Early
from schemas import tracing

if TYPE_CHECKING:
    from consumers.execution import Runner
    from consumers.outcomes import Outcomes
    from consumers.worker import ConveyorWorker

PAUSE_POLL_S = 0.5  # how soon a paused consumer sees the resume

logger = logging.getLogger("conveyor.worker")

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

    def __init__(self, slots: int, slot_free: asyncio.Event) -> None:
        self.slots = slots
        self.busy = 0  # handlers running (or about to) in this lane
        self.finished: list[Running] = []  # succeeded, outcome not written yet
        self.wake = asyncio.Event()  # a handler ended, or the queue has work again
        self.slot_free = slot_free  # shared by the lanes: wakes the blocking read

    @property
    def free(self) -> int:
        return self.slots - self.busy

    def release(self, running: Running) -> None:
        """The job's handler is over: its slot may take the next job. A succeeded job gives
        it back before its outcome is written, so its lane takes the next job in the same
        round trip that writes this one."""
        if running.holds_slot:
            running.holds_slot = False
            self.give_back()

    def give_back(self) -> None:
        """A slot of this lane is free again: its loop may take, and the blocking read
        may read."""
        self.busy -= 1
        self.wake.set()
        self.slot_free.set()


class Lanes:
    """The worker's `max_jobs` slots in `LANES` lanes. `start` the lanes' loops, `run` the
    blocking read until the worker stops picking jobs, then `close` (the lanes write what
    finished, then end)."""

    def __init__(self, worker: ConveyorWorker, runner: Runner, outcomes: Outcomes) -> None:
        self.worker = worker  # its `allow_pick_jobs` (arq's signal handlers clear it), `burst`
        self.producer = worker.producer
        self.queue = worker.queue
        self.consumer = worker.consumer
        self.settings = worker.settings
        self.max_jobs = worker.max_jobs
        self.running = worker.running
        self.tasks = worker.tasks  # arq's: its signal handlers cancel them, `close` awaits them
        self.stopping = worker.stopping
        self.run_job = runner.run
        self.outcomes = outcomes
        count = min(LANES, self.max_jobs)
        self.slot_free = asyncio.Event()
        self.lanes = [
            Lane(self.max_jobs // count + (i < self.max_jobs % count), self.slot_free)
            for i in range(count)
        ]
        self.lane_tasks: list[asyncio.Task[None]] = []
        # The queue looked empty to a lane: until `run` reads something again with a blocking
        # XREADGROUP, lanes only write (a script cannot block).
        self.queue_empty = asyncio.Event()
        self.queue_empty.set()
        self.batches_in_flight = 0  # fetches between their read and their jobs' tasks
        self.work_changed = asyncio.Event()  # a job task ended or a batch was spawned
        self.waiting_to_start: set[asyncio.Task[None]] = set()  # see `start_later`

    @property
    def free(self) -> int:
        """Slots with no handler running: a job waiting for its outcome's write (still in
        `running`) has given its slot back."""
        return self.max_jobs - sum(lane.busy for lane in self.lanes)

    def start(self) -> None:
        self.lane_tasks = [asyncio.create_task(self.run_lane(lane)) for lane in self.lanes]

    async def run(self) -> None:
        """While the queue has work, the lanes take it (see `Lane`). Once it looks empty, wait
        here on a blocking XREADGROUP for as many entries as there are free slots, start them
        with one round trip of start scripts, run each in its own task, and hand the queue
        back to the lanes. Until a signal (arq's handler clears `allow_pick_jobs`) or, in burst
        mode, until the queue is empty."""
        while self.worker.allow_pick_jobs:
            if not self.queue_empty.is_set():
                await self.queue_empty.wait()
                continue
            free = self.free
            if free <= 0:
                self.slot_free.clear()
                await self.slot_free.wait()
                continue
            self.batches_in_flight += 1
            try:
                if await self.producer.paused(self.queue):
                    # Nothing starts; a resume is seen within PAUSE_POLL_S.
                    await pause(self.stopping, PAUSE_POLL_S)
                    continue
                entries = await self.fetch(free)
                await self.start_read(entries)
                if not entries and self.worker.burst and await self.drained():
                    break
                # Work came, or the read timed out: the lanes take once either way. Jobs in
                # the ordered backlog (see `route` in producer/scripts) are found by a take;
                # the stream only has an entry to wake a consumer when the first arrives,
                # which a consumer may have read before it paused, or died with.
                self.queue_empty.clear()
                self.wake()
            except RedisError as exc:
                await self.redis_unavailable(exc)
            finally:
                self.batches_in_flight -= 1
                self.work_changed.set()

    async def run_lane(self, lane: Lane) -> None:
        """One lane's loop: write its finished jobs and take new ones for its free slots, one
        round trip each time, until the worker stops and the lane has nothing left to write.
        A lane stops taking when it finds the queue empty; `run` then waits for work."""
        while True:
            taking = self.worker.allow_pick_jobs and not self.queue_empty.is_set()
            count = lane.free if taking and not self.stopping.is_set() else 0
            if not lane.finished and count <= 0:
                if self.stopping.is_set() and not lane.busy:
                    return
                lane.wake.clear()
                await lane.wake.wait()
                continue
            finished, outcomes = self.outcomes.collect(lane)
            self.batches_in_flight += 1
            try:
                # Asked each time: a provider may be installed after the worker started.
                take = partial(
                    self.producer.take,
                    self.queue,
                    self.consumer,
                    count,
                    outcomes,
                    traced=tracing.active(),
                    gates=self.worker.gates,
                )
                taken = await persist(take, self.settings.visibility_timeout_s)
            except RedisError as exc:
                self._written(finished, None)
                logger.error("could not take or record jobs (%s)", describe(exc))
                await self.redis_unavailable(exc)
                continue
            finally:
                self.batches_in_flight -= 1
                self.work_changed.set()
            for delivery in taken.deliveries:
                self.spawn(delivery, lane)
            self.start_later(taken.early)
            if taken.held:  # promote (which lets held jobs go) learns the gate's time
                self.worker.delayed_changed.set()
            if taken.exhausted:
                self.queue_empty.set()
            self._written(finished, taken.written)

    def _written(self, finished: list[Running], written: list[bool] | None) -> None:
        self.outcomes.written(finished, written)
        if finished:
            self.work_changed.set()

    def spawn(self, delivery: Delivery, lane: Lane | None = None) -> None:
        lane = lane or max(self.lanes, key=lambda lane: lane.free)
        running = Running(delivery, lane)
        self.running[delivery.job_id] = running
        lane.busy += 1
        task = asyncio.create_task(self.run_job(running), name=JOB_TASK_PREFIX + delivery.job_id)
        running.task = task
        self.tasks[delivery.job_id] = task

        def forget(_: asyncio.Task[None]) -> None:
            self.tasks.pop(delivery.job_id, None)
            if running.outcome is None:  # else its lane writes it, then forgets it
                self.running.pop(delivery.job_id, None)
            self.work_changed.set()
            running.lane.release(running)

        task.add_done_callback(forget)

    async def start_read(
        self, entries: list[tuple[str, str]], reserved: Lane | None = None
    ) -> None:
        """Start the jobs of entries this consumer read (`Producer.start`) and run each. A
        job a rate gate let go for its turn is started when it comes (`start_later`); one
        held at a gate wakes the promote loop, which lets the gate's held jobs go. `reserved`:
        the lane whose slot a job let go for its turn kept while it waited."""
        early: list[Early] = []
        try:
            started = await self.producer.start(
                self.queue,
                entries,
                self.consumer,
                traced=tracing.active(),
                gates=self.worker.gates,
                early=early,
            )
        finally:
            if reserved is not None:  # its job runs in it now, or waits again, or neither
                reserved.give_back()
        for delivery in started:
            self.spawn(delivery, reserved)
        self.start_later(early)
        if len(started) < len(entries):  # some skipped: perhaps held at a gate
            self.worker.delayed_changed.set()

    def start_later(self, early: list[Early]) -> None:
        """Start the jobs a rate gate let go just before their turn once it comes. Each keeps
        a slot meanwhile, so that with its turn a worker runs no more than its `max_jobs`;
        and its entry stays this consumer's (if it dies, the reclaim queues the job again)."""
        for job in early:
            lane = max(self.lanes, key=lambda lane: lane.free)
            lane.busy += 1
            self.batches_in_flight += 1
            task = asyncio.create_task(self._start_after(job, lane))
            self.waiting_to_start.add(task)
            task.add_done_callback(self.waiting_to_start.discard)

    async def _start_after(self, job: Early, lane: Lane) -> None:
        reserved: Lane | None = lane
        try:
            # A ms short: the trip to Redis takes about that. Arriving before the turn, the
            # job is let go early again, for what is left (at 20/s: 52 ms between starts at
            # the median without this, 51 with it).
            await asyncio.sleep(max(0, job.wait_ms - 1) / 1000)
            if self.worker.allow_pick_jobs and not self.stopping.is_set():
                reserved = None  # start_read gives it back
                await self.start_read([(job.entry_id, job.job_id)], lane)
            # Else stopping: its entry stays pending, and the reclaim queues the job again.
        except RedisError as exc:  # its entry stays pending: the reclaim queues it again
            logger.warning("could not start job %s (%s)", job.job_id, describe(exc))
        finally:
            if reserved is not None:
                reserved.give_back()
            self.batches_in_flight -= 1
            self.work_changed.set()

    async def close(self) -> None:
        """The lanes write what finished, then end (they see `stopping`)."""
        self.wake()
        await asyncio.wait(self.lane_tasks)

    def wake(self) -> None:
        for lane in self.lanes:
            lane.wake.set()

    async def wait_until_idle(self) -> None:
        """Return once nothing runs here, nothing waits for its write, and no batch is between
        its read and its jobs' tasks."""
        while self.running or self.tasks or self.batches_in_flight:
            self.work_changed.clear()
            await self.work_changed.wait()

    async def fetch(self, count: int) -> list[tuple[str, str]]:
        """(entry id, job id) of up to `count` entries never delivered to any consumer."""
        return await self.producer.fetch(self.queue, self.consumer, count, self.settings.block_ms)

    async def drained(self) -> bool:
        """Burst mode's exit: nothing running here, nothing in the stream (undelivered or
        pending anywhere), nothing delayed."""
        return not self.running and await self.producer.drained(self.queue)

    async def redis_unavailable(self, exc: RedisError) -> None:
        """Redis restarted, failed over or is loading: wait and go on. Entries read but not
        started stay pending and are reclaimed; a group lost with a non-persistent Redis
        is created again."""
        if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
            logger.warning("consumer group missing (Redis lost its data?): creating it again")
            with contextlib.suppress(RedisError):
                await self.producer.ensure_group(self.queue)
            return
        logger.warning("Redis unavailable (%s); retrying in %.1fs", describe(exc), REDIS_RETRY_S)
        await pause(self.stopping, REDIS_RETRY_S)
