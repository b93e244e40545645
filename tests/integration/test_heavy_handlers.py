"""Heavy handlers on real workers: a blocked event loop keeps its lease, `def` handlers run in
threads, child processes are limited by the kernel and never outlive their job or worker."""

from __future__ import annotations

import asyncio
import logging
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from consumers import metrics
from consumers.worker import ConveyorWorker, connect
from conveyor.process import ManagedProcess
from schemas import JobStatus, Settings
from tests.integration.helpers import Driver, wait_for_event, wait_for_terminal

pytestmark = pytest.mark.integration

SLOW_LEASE = {"CONVEYOR_VISIBILITY_TIMEOUT_S": "3"}


def runs(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def pid_exits(pid: int, within_s: float) -> bool:
    """Whether process `pid` (not ours) exits within `within_s`: waits on its pidfd."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        ready = await asyncio.to_thread(select.select, [fd], [], [], within_s)
        return bool(ready[0])
    finally:
        os.close(fd)


async def marker_pid(path: Path, driver: Driver, job_id: str) -> int:
    """The child pid a `long_command` job wrote, once its child runs."""
    await wait_for_event(driver.redis, driver.queue, job_id, "job.started", 15)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not path.exists() or not path.read_text():
        assert loop.time() < deadline, "the command never started"
        await asyncio.sleep(0.02)  # a file has no event to wait on; bounded by the deadline
    return int(path.read_text())


async def test_a_handler_blocking_the_loop_past_the_visibility_timeout_runs_once(
    driver: Driver, spawn_worker: Callable[..., ManagedProcess], tmp_path: Path
) -> None:
    """The measured failure: 8 s of blocking under a 3 s visibility timeout, two workers.
    It ran three times and was dead-lettered as poison; now it runs once and succeeds."""
    log = tmp_path / "runs"
    job_id = await driver.submit("block_loop", payload={"seconds": 8, "path": str(log)})
    spawn_worker("a", **SLOW_LEASE)
    spawn_worker("b", **SLOW_LEASE)
    terminal = await wait_for_terminal(driver.redis, driver.queue, {job_id}, 40)
    assert terminal == {job_id: ["job.succeeded"]}
    assert "job.reclaimed" not in await driver.event_types(job_id)
    job = await driver.producer.get(driver.queue, job_id)
    assert job is not None and job.attempt == 1 and job.result == {"attempt": 1}
    assert len(runs(log)) == 1


async def test_a_handler_blocking_past_its_timeout_is_reclaimed_and_its_result_fenced(
    driver: Driver, spawn_worker: Callable[..., ManagedProcess], tmp_path: Path
) -> None:
    """Declared timeout 2 s, blocking 8 s on its first attempt: renewal stops at the timeout
    plus the grace (1 s here), another worker reclaims it, and the late result is refused."""
    log = tmp_path / "runs"
    payload = {"seconds": 8, "path": str(log), "on_attempt": 1}
    job_id = await driver.submit("block_loop_2s", payload=payload)
    a = spawn_worker("a", CONVEYOR_LEASE_GRACE_S="1")
    b = spawn_worker("b", CONVEYOR_LEASE_GRACE_S="1")
    terminal = await wait_for_terminal(driver.redis, driver.queue, {job_id}, 30)
    assert terminal == {job_id: ["job.succeeded"]}
    for worker in (a, b):  # the first attempt's worker wakes and tries its late write
        worker.stop(grace_s=15)
    events = await driver.producer.events(driver.queue, job_id)
    kinds = [e.event.value for e in events]
    assert kinds.count("job.reclaimed") == 1 and kinds.count("job.succeeded") == 1
    reclaimed_at = kinds.index("job.reclaimed")
    assert all(e.attempt == 2 for e in events[reclaimed_at:])
    job = await driver.producer.get(driver.queue, job_id)
    assert job is not None and job.result == {"attempt": 2}
    assert [line.split()[1] for line in runs(log)] == ["1", "2"]


async def test_a_def_handler_leaves_the_loop_to_other_jobs(
    driver: Driver, spawn_worker: Callable[..., ManagedProcess]
) -> None:
    slow = await driver.submit("blocking_def", payload={"seconds": 8})
    spawn_worker("only")
    await wait_for_event(driver.redis, driver.queue, slow, "job.started", 15)
    started = time.monotonic()
    quick = await driver.submit("noop")
    await wait_for_terminal(driver.redis, driver.queue, {quick}, 5)
    assert time.monotonic() - started < 1.0
    assert await driver.status(slow) is JobStatus.RUNNING
    await wait_for_terminal(driver.redis, driver.queue, {slow}, 20)
    events = await driver.producer.events(driver.queue, slow)
    progress = [e.data.get("progress") for e in events if e.event.value == "job.progress"]
    assert progress == [25, 50, 75, 100]
    job = await driver.producer.get(driver.queue, slow)
    assert job is not None and job.status is JobStatus.SUCCEEDED and job.attempt == 1


@pytest.mark.parametrize(
    ("job_type", "payload", "says"),
    [
        ("hog_memory", {"mb": 500, "limit_mb": 100}, "memory limit"),
        ("hog_cpu", {"cpu_s": 1}, "CPU limit"),
    ],
)
async def test_a_child_over_its_limit_fails_the_job_at_once(
    driver: Driver,
    spawn_worker: Callable[..., ManagedProcess],
    job_type: str,
    payload: dict[str, int],
    says: str,
) -> None:
    job_id = await driver.submit(job_type, payload=payload)
    spawn_worker("only")
    assert await wait_for_terminal(driver.redis, driver.queue, {job_id}, 30) == {
        job_id: ["job.failed"]
    }
    job = await driver.producer.get(driver.queue, job_id)
    assert job is not None and job.attempt == 1
    assert job.error is not None and job.error.startswith("ResourceExceeded") and says in job.error


async def test_cancel_kills_a_commands_process_within_the_bound(
    driver: Driver, spawn_worker: Callable[..., ManagedProcess], tmp_path: Path
) -> None:
    marker = tmp_path / "pid"
    job_id = await driver.submit("long_command", payload={"marker": str(marker)})
    spawn_worker("only")
    pid = await marker_pid(marker, driver, job_id)
    requested = time.monotonic()
    assert await driver.producer.cancel(driver.queue, job_id) == "requested"
    await wait_for_event(driver.redis, driver.queue, job_id, "job.cancelled", 5)
    assert time.monotonic() - requested < 2.0  # the cancel bound: 0.75 s plus round trips
    assert await pid_exits(pid, 1.0)
    assert await driver.status(job_id) is JobStatus.CANCELLED


async def test_a_timeout_kills_a_commands_process(
    driver: Driver, spawn_worker: Callable[..., ManagedProcess], tmp_path: Path
) -> None:
    marker = tmp_path / "pid"
    job_id = await driver.submit("long_command_1s", payload={"marker": str(marker)})
    spawn_worker("only")
    pid = await marker_pid(marker, driver, job_id)
    assert await pid_exits(pid, 3.0), "the command outlived its job's timeout"
    assert await wait_for_terminal(driver.redis, driver.queue, {job_id}, 10) == {
        job_id: ["job.failed"]
    }
    job = await driver.producer.get(driver.queue, job_id)
    assert job is not None and job.error == "TimeoutError: timed out after 1s"


async def test_a_sigtermed_worker_leaves_no_command_running(
    driver: Driver, spawn_worker: Callable[..., ManagedProcess], tmp_path: Path
) -> None:
    """Past the shutdown grace (2 s here) the job's task is cancelled, and its child with it;
    the entry stays pending for another consumer."""
    marker = tmp_path / "pid"
    job_id = await driver.submit("long_command", payload={"marker": str(marker)})
    worker = spawn_worker("stopping")
    pid = await marker_pid(marker, driver, job_id)
    code = worker.stop(grace_s=15)  # SIGTERM, then wait for it to exit
    assert code != -signal.SIGKILL, "the worker did not stop by itself"
    assert await pid_exits(pid, 1.0), "the command outlived its worker's shutdown"
    assert await driver.status(job_id) is JobStatus.RUNNING  # left for a reclaim


async def test_a_sigkilled_workers_command_dies_with_it_and_the_job_is_reclaimed(
    driver: Driver, spawn_worker: Callable[..., ManagedProcess], tmp_path: Path
) -> None:
    marker = tmp_path / "pid"
    payload = {"marker": str(marker), "seconds": 60, "later_s": 0.1}
    job_id = await driver.submit("long_command", payload=payload)
    victim = spawn_worker("victim")
    pid = await marker_pid(marker, driver, job_id)
    os.kill(victim.pid, signal.SIGKILL)
    assert await pid_exits(pid, 5.0), "the command outlived its SIGKILLed worker"
    victim.stop()
    spawn_worker("survivor")
    assert await wait_for_terminal(driver.redis, driver.queue, {job_id}, 30) == {
        job_id: ["job.succeeded"]
    }
    assert "job.reclaimed" in await driver.event_types(job_id)


async def test_chaos_of_async_def_and_process_handlers_ends_every_job_once(
    driver: Driver, spawn_worker: Callable[..., ManagedProcess], tmp_path: Path
) -> None:
    log = tmp_path / "runs"
    job_ids: dict[str, str] = {}
    for i in range(100):
        kind = ("async", "def", "process")[i % 3]
        if kind == "def":
            job_id = await driver.submit("mixed_def", payload={"path": str(log)})
        else:
            job_id = await driver.submit("mixed", payload={"kind": kind, "path": str(log)})
        job_ids[job_id] = kind
    killed, frozen = spawn_worker("killed"), spawn_worker("frozen")
    spawn_worker("steady")
    await wait_for_event(driver.redis, driver.queue, next(iter(job_ids)), "job.started", 15)
    os.kill(killed.pid, signal.SIGKILL)
    os.kill(frozen.pid, signal.SIGSTOP)
    terminal = await wait_for_terminal(driver.redis, driver.queue, set(job_ids), 90)
    assert terminal == {job_id: ["job.succeeded"] for job_id in job_ids}
    for job_id, kind in job_ids.items():
        job = await driver.producer.get(driver.queue, job_id)
        assert job is not None
        assert job.result == {"async": "async", "def": "def", "process": 49}[kind]
    ran = {line.split()[0] for line in runs(log)}
    assert ran == set(job_ids)  # every job ran; some twice (at-least-once), ended once


async def test_a_stalled_loop_is_reported_with_its_job_and_stack(
    driver: Driver,
    settings: Settings,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = settings.model_copy(update={"loop_stall_warn_s": 0.5})
    job_id = await driver.submit(
        "block_loop", payload={"seconds": 1.5, "path": str(tmp_path / "runs")}
    )
    stalls_before = metrics.LOOP_STALLS._value.get()
    worker = ConveyorWorker(s, connect(s), queue=driver.queue, burst=True, handle_signals=False)
    seen: list[str] = []  # the health-check key as `--check` would read it, while stalled
    watching = threading.Event()

    def watch_health() -> None:
        client = redis.Redis.from_url(s.redis_url or "", decode_responses=True)
        while not watching.wait(0.05):  # the test's loop is the one blocked: a thread looks
            seen.append(client.get(worker.health_check_key) or "")
        client.close()

    watcher = threading.Thread(target=watch_health)
    watcher.start()
    with caplog.at_level(logging.WARNING, logger="conveyor.worker"):
        await worker.async_run()
        await worker.close()
    watching.set()
    watcher.join()
    assert any(f"STALLED event loop blocked by job {job_id}" in value for value in seen)
    assert await driver.status(job_id) is JobStatus.SUCCEEDED
    [record] = [r for r in caplog.records if "event loop blocked" in r.getMessage()]
    message = record.getMessage()
    assert f"job {job_id} (block_loop)" in message
    assert "in block_loop" in message and "time.sleep(seconds)" in message  # the stack
    assert metrics.LOOP_STALLS._value.get() == stalls_before + 1
    assert worker.keeper.stalls == 1 and worker.keeper.longest_stall_s >= 0.5
    lag = metrics.LOOP_LAG.collect()[0].samples
    assert any(s.name.endswith("_sum") and s.value >= 1.0 for s in lag)
