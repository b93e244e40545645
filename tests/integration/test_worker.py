"""The consumer in-process against a real Redis: outcomes of every kind of handler."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from consumers.worker import ConveyorWorker, backoff_ms, connect
from producer import Producer
from schemas import JobStatus, Settings
from tests.integration.helpers import (
    Driver,
    running,
    until,
    wait_for_event,
    wait_for_terminal,
)

S = JobStatus


@pytest.fixture
def make_worker(settings: Settings, queue_name: str) -> Callable[..., ConveyorWorker]:
    def make(s: Settings | None = None, **kwargs: object) -> ConveyorWorker:
        s = s or settings
        return ConveyorWorker(
            s,
            connect(s),
            queue=queue_name,
            handle_signals=False,
            **kwargs,  # type: ignore[arg-type]
        )

    return make


@pytest.fixture
def drain(make_worker: Callable[..., ConveyorWorker]) -> Callable[..., Awaitable[ConveyorWorker]]:
    async def run(**kwargs: object) -> ConveyorWorker:
        """A burst worker, run until the queue is empty, then closed."""
        worker = make_worker(burst=True, **kwargs)
        await worker.async_run()
        await worker.close()
        return worker

    return run


async def test_burst_runs_every_job_to_exactly_one_terminal_state(
    driver: Driver, producer: Producer, drain: Callable[..., Awaitable[ConveyorWorker]]
) -> None:
    from schemas import SubmitRequest

    ids = await producer.submit_many(
        [SubmitRequest(type="noop", queue=driver.queue, payload={"i": i}) for i in range(3000)]
    )
    await drain(concurrency=64)
    terminal = await wait_for_terminal(driver.redis, driver.queue, set(ids), 10)
    assert all(events == ["job.succeeded"] for events in terminal.values())
    keys = producer.keys(driver.queue)
    # Nothing finished is left in the stream or the pending list.
    assert await driver.redis.xlen(keys.jobs) == 0
    assert (await driver.redis.xpending(keys.jobs, "workers"))["pending"] == 0
    job = await producer.get(driver.queue, ids[1234])
    assert job is not None and job.result == {"i": 1234}


async def test_burst_waits_for_delayed_jobs_and_waiting_parents(
    driver: Driver, producer: Producer, drain: Callable[..., Awaitable[ConveyorWorker]]
) -> None:
    from schemas import SubmitRequest

    later = await driver.submit("noop", payload={"n": 1}, delay_s=0.5)
    child = SubmitRequest(type="noop", queue=driver.queue, delay_s=0.5)
    parent = SubmitRequest(type="noop", queue=driver.queue, children=[child])
    parent_id = (await producer.submit(parent, tenant="t1")).job_id
    assert await driver.status(parent_id) is S.WAITING
    await drain()
    # The worker left only once nothing was delayed and no parent still waited.
    for job_id in (later, parent_id):
        assert await driver.status(job_id) is S.SUCCEEDED


async def test_retry_with_backoff_then_success(
    driver: Driver, producer: Producer, drain: Callable[..., Awaitable[ConveyorWorker]]
) -> None:
    job_id = await driver.submit("sleep", payload={"seconds": 0.01, "fail_attempts": 2})
    await drain()
    job = await producer.get(driver.queue, job_id)
    assert job is not None and job.status is S.SUCCEEDED and job.attempt == 3
    types = await driver.event_types(job_id)
    assert types.count("job.retrying") == 2 and types[-1] == "job.succeeded"


async def test_retry_exhausted_fails_and_dead_letters(
    driver: Driver, producer: Producer, drain: Callable[..., Awaitable[ConveyorWorker]]
) -> None:
    job_id = await driver.submit(
        "sleep", payload={"seconds": 0, "fail_attempts": 99}, max_attempts=3
    )
    await drain()
    job = await producer.get(driver.queue, job_id)
    assert job is not None and job.status is S.FAILED and job.attempt == 3
    dead = await driver.redis.xrange(producer.keys(driver.queue).dead)
    assert [f["job_id"] for _, f in dead] == [job_id]
    assert (await driver.event_types(job_id)).count("job.failed") == 1


DEEP_PATH = "result" + ".a" * 64  # where `unstorable` nests too deep, shortened as in errors


@pytest.mark.parametrize(
    ("job_type", "payload", "attempts", "error"),
    [
        # declared with timeout=0.3 and max_tries=2 (tests/handlers.py)
        ("short_timeout", {"seconds": 30}, 2, "TimeoutError: timed out after 0.3s"),
        # its own TimeoutError (a client library's deadline), not the job's timeout
        ("upstream_timeout", {}, 1, "TimeoutError: upstream took too long"),
        # a PermanentError is not retried
        ("permanent", {"reason": "no such file"}, 1, "PermanentError: no such file"),
        # a result JSON cannot carry: retrying would return the same
        (
            "unstorable",
            {"kind": "deep"},
            1,
            "PermanentError: the result cannot be stored: "
            f"{DEEP_PATH[:50]}…{DEEP_PATH[-60:]}: nested deeper than 64 levels",
        ),
        (
            "unstorable",
            {"kind": "nan"},
            1,
            "PermanentError: the result cannot be stored: result: nan is not a JSON number"
            " (out of range or NaN)",
        ),
        (
            "unstorable",
            {"kind": "set"},
            1,
            "PermanentError: the result cannot be stored: result: a set is not JSON",
        ),
    ],
)
async def test_a_failed_job_records_its_attempts_and_its_error(
    driver: Driver,
    producer: Producer,
    drain: Callable[..., Awaitable[ConveyorWorker]],
    job_type: str,
    payload: dict[str, Any],
    attempts: int,
    error: str,
) -> None:
    job_id = await driver.submit(job_type, payload=payload)
    await drain()
    job = await producer.get(driver.queue, job_id)
    assert job is not None and job.status is S.FAILED and job.attempt == attempts
    assert job.error == error


async def test_arq_retry_defer_is_honoured(
    driver: Driver, producer: Producer, drain: Callable[..., Awaitable[ConveyorWorker]]
) -> None:
    job_id = await driver.submit("flaky", payload={"fail_attempts": 1, "defer_s": 0.2})
    await drain()
    events = await producer.events(driver.queue, job_id)
    retrying = next(e for e in events if e.event.value == "job.retrying")
    assert retrying.data["delay_ms"] == 200
    assert events[-1].event.value == "job.succeeded"


async def test_unknown_type_fails_clearly(
    driver: Driver, producer: Producer, drain: Callable[..., Awaitable[ConveyorWorker]]
) -> None:
    job_id = await driver.submit("not_registered")
    await drain()
    job = await producer.get(driver.queue, job_id)
    assert job is not None and job.status is S.FAILED
    assert "no handler for job type 'not_registered'" in (job.error or "")


async def test_cancel_running_job_stops_handler_within_a_second(
    driver: Driver, producer: Producer, make_worker: Callable[..., ConveyorWorker], tmp_path: Path
) -> None:
    marker = tmp_path / "cleanup"
    job_id = await driver.submit("hang", payload={"marker": str(marker)})
    async with running(make_worker()):
        await wait_for_event(driver.redis, driver.queue, job_id, "job.progress", 5)
        loop = asyncio.get_running_loop()
        asked = loop.time()
        assert await producer.cancel(driver.queue, job_id) == "requested"
        await wait_for_event(driver.redis, driver.queue, job_id, "job.cancelled", 5)
        assert loop.time() - asked < 1.0 + 0.5  # poll interval plus a round trip
    assert marker.read_text() == "cleaned up attempt 1"  # the handler's finally ran first
    assert await driver.status(job_id) is S.CANCELLED
    assert (await driver.redis.xpending(producer.keys(driver.queue).jobs, "workers"))[
        "pending"
    ] == 0


@pytest.mark.parametrize("delay_s", [0, 3600])
async def test_cancelled_before_start_never_runs(
    driver: Driver,
    producer: Producer,
    drain: Callable[..., Awaitable[ConveyorWorker]],
    tmp_path: Path,
    delay_s: float,
) -> None:
    log = tmp_path / "runs"
    job_id = await driver.submit("record", payload={"path": str(log)}, delay_s=delay_s)
    assert await producer.cancel(driver.queue, job_id) == "cancelled"
    await drain()
    assert not log.exists()
    assert await driver.event_types(job_id) == [
        "job.scheduled" if delay_s else "job.queued",
        "job.cancelled",
    ]


async def test_long_job_is_not_stolen_while_its_owner_renews(
    driver: Driver,
    settings_factory: Callable[..., Settings],
    make_worker: Callable[..., ConveyorWorker],
    tmp_path: Path,
) -> None:
    """A job running 6 visibility timeouts long, with a second consumer reclaiming eagerly."""
    fast = settings_factory(
        handlers="tests.handlers", visibility_timeout_s=0.3, reclaim_interval_s=0.05
    )
    log = tmp_path / "runs"
    job_id = await driver.submit("record", payload={"path": str(log), "seconds": 1.8})
    async with running(make_worker(fast, name="owner")):
        await wait_for_event(driver.redis, driver.queue, job_id, "job.started", 5)
        async with running(make_worker(fast, name="thief")) as thief:
            terminal = await wait_for_terminal(driver.redis, driver.queue, {job_id}, 10)
    assert terminal == {job_id: ["job.succeeded"]}
    assert thief.reclaimed == 0
    assert len(log.read_text().splitlines()) == 1  # ran exactly once
    assert "job.reclaimed" not in await driver.event_types(job_id)


def test_backoff_is_exponential_with_full_jitter() -> None:
    draws = [backoff_ms(attempt, 2.0, 600.0) for attempt in (1, 2, 3, 20) for _ in range(200)]
    first, second, third, capped = (draws[i * 200 : (i + 1) * 200] for i in range(4))
    assert max(first) <= 2000 and max(second) <= 4000 and max(third) <= 8000
    assert max(capped) <= 600_000 and max(capped) > 100_000
    assert min(first) < 1000  # full jitter reaches down towards zero


async def test_consumer_records_when_it_was_last_seen(
    driver: Driver, drain: Callable[..., Awaitable[ConveyorWorker]], redis: aioredis.Redis
) -> None:
    await drain(name="seen-me")
    seen = await redis.hgetall(driver.producer.keys(driver.queue).consumer_seen())
    assert "seen-me" in seen


async def test_on_failure_hook_runs_once_per_failed_job(
    driver: Driver, make_worker: Callable[..., ConveyorWorker], tmp_path: Path
) -> None:
    refunds = tmp_path / "refunds"
    failed = {await driver.submit("charge", payload={"refunds": str(refunds)}) for _ in range(5)}
    succeeded = await driver.submit("noop")
    async with running(make_worker()), running(make_worker()):  # two consumers compete
        await wait_for_terminal(driver.redis, driver.queue, {*failed, succeeded}, 10)
        await until(
            lambda: refunds.exists() and len(refunds.read_text().splitlines()) >= 5,
            redis=driver.redis,
            stream=driver.producer.keys(driver.queue).dead,
            timeout_s=10,
            what="five refunds",
            pace_ms=1000,
        )
    lines = refunds.read_text().splitlines()
    assert sorted(line.split()[0] for line in lines) == sorted(failed)  # once each, no more
    assert all(line.split()[1] == "failed" for line in lines)


async def test_consumers_gone_for_long_with_nothing_pending_are_removed(
    driver: Driver, settings_factory: Callable[..., Settings], redis: aioredis.Redis
) -> None:
    keys = driver.producer.keys(driver.queue)
    await driver.producer.ensure_group(driver.queue)
    await redis.xgroup_createconsumer(keys.jobs, "workers", "ghost")
    await redis.hset(keys.consumer_seen(), "ghost", "1")  # last seen in 1970
    assert "ghost" in {c["name"] for c in await redis.xinfo_consumers(keys.jobs, "workers")}
    settings = settings_factory(handlers="tests.handlers", consumer_idle_cleanup_s=0.05)
    worker = ConveyorWorker(settings, connect(settings), queue=driver.queue, handle_signals=False)
    async with running(worker):

        async def ghost_gone() -> bool:
            consumers = await redis.xinfo_consumers(keys.jobs, "workers")
            return "ghost" not in {c["name"] for c in consumers}

        await until(
            ghost_gone,
            redis=redis,
            stream=keys.events,
            timeout_s=10,
            what="ghost's removal",
            pace_ms=100,
        )
    assert not await redis.hexists(keys.consumer_seen(), "ghost")


async def test_a_graceful_shutdown_runs_the_batch_it_caught_being_started(
    driver: Driver, make_worker: Callable[..., ConveyorWorker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM between a fetch and its jobs' tasks: the batch still runs within the grace
    period, rather than being left delivered with no handler until a reclaim."""
    job_id = await driver.submit("noop")
    worker = make_worker()
    on_the_wire, release = asyncio.Event(), asyncio.Event()
    start = worker.producer.start

    async def held_start(
        queue: str, entries: list[tuple[str, str]], consumer: str, **options: Any
    ) -> Any:
        if entries:
            on_the_wire.set()
            await release.wait()
        return await start(queue, entries, consumer, **options)

    monkeypatch.setattr(worker.producer, "start", held_start)
    task = asyncio.create_task(worker.async_run())
    async with asyncio.timeout(10):
        await on_the_wire.wait()
    worker.handle_sig_wait_for_completion(signal.SIGTERM)  # what SIGTERM does
    release.set()
    async with asyncio.timeout(10):
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await worker.close()
    assert await wait_for_terminal(driver.redis, driver.queue, {job_id}, 5) == {
        job_id: ["job.succeeded"]
    }


async def test_jobs_finishing_while_the_consumer_waits_for_work_are_recorded_at_once(
    driver: Driver,
    settings_factory: Callable[..., Settings],
    make_worker: Callable[..., ConveyorWorker],
    tmp_path: Path,
) -> None:
    """With the queue empty the consumer blocks on XREADGROUP (6 s here). A job submitted
    meanwhile starts beside the long one already running, and when it finishes its outcome
    is written at once, not when that read next returns."""
    idle = settings_factory(handlers="tests.handlers", block_ms=6_000)
    long_id = await driver.submit("record", payload={"path": str(tmp_path / "runs"), "seconds": 30})
    async with running(make_worker(idle, concurrency=2)):
        await wait_for_event(driver.redis, driver.queue, long_id, "job.started", 5)
        short_id = await driver.submit("sleep", payload={"seconds": 0.2})
        await wait_for_event(driver.redis, driver.queue, short_id, "job.succeeded", 2)
        assert await driver.status(long_id) is S.RUNNING
