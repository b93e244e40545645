"""Consumers as real processes, killed, frozen and crashing: every job still ends exactly once."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import redis.asyncio as aioredis

from conveyor.process import ManagedProcess
from producer import Producer
from schemas import JobStatus
from tests.integration.helpers import Driver, until, wait_for_event, wait_for_terminal


async def test_killed_consumer_jobs_are_reclaimed_and_end_once(
    driver: Driver, spawn_worker: Callable[..., ManagedProcess], tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    job_ids = {
        await driver.submit("record", payload={"path": str(runs), "seconds": 3}) for _ in range(4)
    }
    victim = spawn_worker("victim")
    for job_id in job_ids:
        await wait_for_event(driver.redis, driver.queue, job_id, "job.started", 15)
    os.kill(victim.pid, signal.SIGKILL)
    victim.stop()
    spawn_worker("survivor")
    terminal = await wait_for_terminal(driver.redis, driver.queue, job_ids, 30)
    assert terminal == {job_id: ["job.succeeded"] for job_id in job_ids}
    for job_id in job_ids:
        types = await driver.event_types(job_id)
        assert types.count("job.reclaimed") == 1, types
        job = await driver.producer.get(driver.queue, job_id)
        assert job is not None and job.attempt == 2
    keys = driver.producer.keys(driver.queue)
    assert await driver.redis.xlen(keys.jobs) == 0
    assert (await driver.redis.xpending(keys.jobs, "workers"))["pending"] == 0


async def test_frozen_consumer_is_fenced_out_when_it_wakes(
    driver: Driver, spawn_worker: Callable[..., ManagedProcess], tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    job_id = await driver.submit("record", payload={"path": str(runs), "seconds": 2})
    frozen = spawn_worker("frozen")
    await wait_for_event(driver.redis, driver.queue, job_id, "job.started", 15)
    os.kill(frozen.pid, signal.SIGSTOP)
    spawn_worker("other")
    await wait_for_event(driver.redis, driver.queue, job_id, "job.reclaimed", 15)
    os.kill(frozen.pid, signal.SIGCONT)  # wakes up believing it still owns the job
    terminal = await wait_for_terminal(driver.redis, driver.queue, {job_id}, 30)
    assert terminal == {job_id: ["job.succeeded"]}
    # Let the woken consumer try its late writes, then check none landed: stop it
    # gracefully (its handler finishes or is fenced) and look at the whole history.
    frozen.stop(grace_s=10)
    events = await driver.producer.events(driver.queue, job_id)
    assert [e.event.value for e in events].count("job.succeeded") == 1
    reclaim_at = next(i for i, e in enumerate(events) if e.event.value == "job.reclaimed")
    assert all(e.attempt == 2 for e in events[reclaim_at:])  # nothing from attempt 1 after
    job = await driver.producer.get(driver.queue, job_id)
    assert job is not None and job.status is JobStatus.SUCCEEDED and job.attempt == 2


async def test_handler_that_kills_its_process_is_dead_lettered(
    driver: Driver, spawn_worker: Callable[..., ManagedProcess], producer: Producer
) -> None:
    job_id = await driver.submit("crash")
    # Each delivery kills the consumer running it: three die, the fourth finds the poison.
    for i in range(4):
        spawn_worker(f"w{i}")
    failed = await wait_for_event(driver.redis, driver.queue, job_id, "job.failed", 60)
    assert '"reason":"poison"' in failed["data"]
    job = await producer.get(driver.queue, job_id)
    assert job is not None and job.status is JobStatus.FAILED
    assert "delivered 3 times" in (job.error or "")
    dead = await driver.redis.xrange(producer.keys(driver.queue).dead)
    assert [(f["job_id"], f["reason"]) for _, f in dead] == [(job_id, "poison")]
    types = await driver.event_types(job_id)
    assert types.count("job.failed") == 1 and types[-1] == "job.failed"


async def test_sigterm_lets_running_jobs_finish(
    driver: Driver, spawn_worker: Callable[..., ManagedProcess], tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    job_id = await driver.submit("record", payload={"path": str(runs), "seconds": 1})
    worker = spawn_worker("graceful")
    await wait_for_event(driver.redis, driver.queue, job_id, "job.started", 15)
    assert worker.stop(grace_s=10) == 0
    terminal = await wait_for_terminal(driver.redis, driver.queue, {job_id}, 5)
    assert terminal == {job_id: ["job.succeeded"]}


async def test_sigterm_past_grace_leaves_job_for_another_consumer(
    driver: Driver,
    spawn_worker: Callable[..., ManagedProcess],
    tmp_path: Path,
    redis: aioredis.Redis,
) -> None:
    runs = tmp_path / "runs"
    job_id = await driver.submit("record", payload={"path": str(runs), "seconds": 4})
    worker = spawn_worker("impatient", CONVEYOR_SHUTDOWN_GRACE_S="1")
    # Progress, not job.started: the handler must be running when SIGTERM lands (a SIGTERM
    # between the start script and the handler's task also leaves the job to be reclaimed,
    # but then the handler has run once, not twice).
    await wait_for_event(driver.redis, driver.queue, job_id, "job.progress", 15)
    worker.stop(grace_s=10)
    assert await driver.status(job_id) is JobStatus.RUNNING  # not failed, not lost
    spawn_worker("heir")
    terminal = await wait_for_terminal(driver.redis, driver.queue, {job_id}, 30)
    assert terminal == {job_id: ["job.succeeded"]}
    assert len(runs.read_text().splitlines()) == 2


async def test_on_failure_runs_once_for_a_job_dead_lettered_by_reclaim(
    driver: Driver, spawn_worker: Callable[..., ManagedProcess], tmp_path: Path
) -> None:
    refunds = tmp_path / "refunds"
    job_id = await driver.submit("charge", payload={"refunds": str(refunds), "crash": True})
    for i in range(4):  # three die running it; the fourth finds it poison
        spawn_worker(f"w{i}")
    await wait_for_event(driver.redis, driver.queue, job_id, "job.failed", 60)
    dead = driver.producer.keys(driver.queue).dead

    async def hook_ran_and_acked() -> bool:
        # Acknowledged too: a second consumer had every chance to run it again.
        pending = (await driver.redis.xpending(dead, "on_failure"))["pending"]
        return refunds.exists() and not pending

    await until(hook_ran_and_acked, redis=driver.redis, stream=dead, timeout_s=15, what="the hook")
    (line,) = refunds.read_text().splitlines()
    assert line.startswith(f"{job_id} failed delivered 3 times")
