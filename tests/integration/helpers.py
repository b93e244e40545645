"""Helpers for driving jobs through the state machine against the real test Redis, and for
waiting on what they do (blocking on streams, never sleeping)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from consumers.worker import ConveyorWorker
from producer import Delivery, Producer
from schemas import CONSUMER_GROUP, TERMINAL_EVENTS, JobStatus, QueueKeys, SubmitRequest


class Driver:
    """Moves one test job into any status using only the producer's public API."""

    def __init__(self, producer: Producer, redis: aioredis.Redis, queue: str) -> None:
        self.producer = producer
        self.redis = redis
        self.queue = queue

    async def submit(self, job_type: str = "noop", **fields: Any) -> str:
        request = SubmitRequest(type=job_type, queue=self.queue, **fields)
        return (await self.producer.submit(request, tenant="t1")).job_id

    async def deliver(self, consumer: str = "c1") -> list[tuple[str, str]]:
        """XREADGROUP every new entry for `consumer`: (entry id, job id)."""
        await self.producer.ensure_group(self.queue)
        reply = await self.redis.xreadgroup(
            CONSUMER_GROUP, consumer, {self.producer.keys(self.queue).jobs: ">"}, count=1000
        )
        return [(eid, f["job_id"]) for _, rows in reply or () for eid, f in rows]

    async def running(self, **fields: Any) -> Delivery:
        job_id = await self.submit(**fields)
        entries = [e for e in await self.deliver() if e[1] == job_id]
        (delivery,) = await self.producer.start(self.queue, entries, "c1")
        return delivery

    async def job_in(self, status: JobStatus) -> str:
        if status is JobStatus.SCHEDULED:
            return await self.submit(delay_s=3600)
        if status is JobStatus.QUEUED:
            return await self.submit()
        delivery = await self.running()
        if status is JobStatus.SUCCEEDED:
            assert await self.producer.succeed(delivery, {"ok": True})
        elif status is JobStatus.FAILED:
            await self.producer.fail(
                delivery, "boom", retryable=False, backoff_ms=0, default_max_attempts=1
            )
        elif status is JobStatus.CANCELLED:
            await self.producer.cancel(self.queue, delivery.job_id)
            assert await self.producer.cancelled(delivery, "cancelled by request")
        return delivery.job_id

    async def status(self, job_id: str) -> JobStatus:
        job = await self.producer.get(self.queue, job_id)
        assert job is not None
        return job.status

    async def event_types(self, job_id: str) -> list[str]:
        return [e.event.value for e in await self.producer.events(self.queue, job_id)]


@contextlib.asynccontextmanager
async def running(worker: ConveyorWorker) -> AsyncIterator[ConveyorWorker]:
    """A worker in a background task, stopped (and closed) when the block ends."""
    task = asyncio.create_task(worker.async_run())
    try:
        yield worker
    finally:
        worker.allow_pick_jobs = False
        worker.handle_sig(signal.SIGINT)  # what SIGINT does: cancel tasks and main
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await worker.close()


async def wait_for_terminal(
    redis: aioredis.Redis, queue: str, job_ids: set[str], timeout_s: float, prefix: str = "conveyor"
) -> dict[str, list[str]]:
    """Read the queue's events stream (XREAD BLOCK, no polling sleeps) until every job in
    `job_ids` has a terminal event, or fail at the deadline. Returns each job's terminal
    event types in order (a correct run has exactly one per job)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    key = QueueKeys(queue, prefix).events
    last_id = "0"
    terminal: dict[str, list[str]] = {}
    while not job_ids <= terminal.keys():
        remaining = deadline - loop.time()
        if remaining <= 0:
            missing = sorted(job_ids - terminal.keys())
            raise AssertionError(f"{len(missing)} jobs never ended, e.g. {missing[:3]}")
        reply = await redis.xread({key: last_id}, count=1000, block=int(min(remaining, 1) * 1000))
        for _, rows in reply or ():
            for entry_id, fields in rows:
                last_id = entry_id
                if fields["event"] in TERMINAL_EVENTS:
                    terminal.setdefault(fields["job_id"], []).append(fields["event"])
    return terminal


async def wait_for_event(
    redis: aioredis.Redis, queue: str, job_id: str, event: str, timeout_s: float
) -> dict[str, str]:
    """Block on the job's own events stream until `event` appears; return its fields."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    key = QueueKeys(queue).job_events(job_id)
    last_id = "0"
    while (remaining := deadline - loop.time()) > 0:
        reply = await redis.xread({key: last_id}, block=int(min(remaining, 1) * 1000))
        for _, rows in reply or ():
            for entry_id, fields in rows:
                last_id = entry_id
                if fields["event"] == event:
                    return dict(fields)
    raise AssertionError(f"no {event} for job {job_id} within {timeout_s}s")


async def until(
    check: Callable[[], bool | Awaitable[bool]],
    *,
    redis: aioredis.Redis,
    stream: str,
    timeout_s: float,
    what: str,
    pace_ms: int = 200,
) -> None:
    """Re-check `check` whenever `stream` gets an entry (or every `pace_ms`) until it holds;
    fail naming `what` at the deadline. Blocking on the stream paces the loop: no sleeps."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        assert loop.time() < deadline, f"timed out after {timeout_s}s waiting for {what}"
        await redis.xread({stream: "$"}, block=pace_ms)
