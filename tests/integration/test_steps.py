"""Multi-step jobs (`ctx.step`) on real worker processes: a retry, a reclaim and a manual
retry resume after the last recorded step; a frozen attempt cannot record one. Executions
are counted through a side effect (a line per real run of a step), never inferred."""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from conveyor.process import ManagedProcess
from schemas import JobStatus
from schemas.models import Event
from tests.integration.helpers import Driver, until, wait_for_event, wait_for_terminal


def runs(path: Path) -> Counter[str]:
    """How many times each step really ran, from the handler's lines `job step attempt`."""
    lines = path.read_text().split() if path.exists() else []
    return Counter(lines[1::3])


def step_events(events: list[Event]) -> list[tuple[int, str, str]]:
    """(attempt, step, state) of every job.step event, in order."""
    return [
        (e.attempt, e.data["step"], e.data["state"]) for e in events if e.event.value == "job.step"
    ]


async def test_a_failing_last_step_never_runs_the_first_two_again(
    driver: Driver, spawn_worker: Callable[..., ManagedProcess], tmp_path: Path
) -> None:
    path = tmp_path / "runs"
    job_id = await driver.submit("pipeline", payload={"path": str(path), "fail_third": 2})
    spawn_worker("w")
    assert await wait_for_terminal(driver.redis, driver.queue, {job_id}, 30) == {
        job_id: ["job.succeeded"]
    }
    assert runs(path) == {"one": 1, "two": 1, "three": 3}
    job = await driver.producer.get(driver.queue, job_id)
    assert job is not None and job.status is JobStatus.SUCCEEDED and job.attempt == 3
    assert job.result == {"third": 7}
    assert [(s.name, s.state.value, s.attempt) for s in job.steps] == [
        ("one", "succeeded", 1),
        ("two", "succeeded", 1),
        ("three", "succeeded", 3),
    ]
    events = step_events(await driver.producer.events(driver.queue, job_id))
    for attempt in (2, 3):
        assert (attempt, "one", "restored") in events
        assert (attempt, "two", "restored") in events
        assert (attempt, "one", "started") not in events
    assert events.count((1, "three", "failed")) == 1
    assert events[-1] == (3, "three", "succeeded")


async def test_a_manual_retry_resumes_and_from_start_runs_everything_again(
    driver: Driver, spawn_worker: Callable[..., ManagedProcess], tmp_path: Path
) -> None:
    path = tmp_path / "runs"
    payload = {"path": str(path), "fail_third": 2}
    job_id = await driver.submit("pipeline", payload=payload, max_attempts=1)
    spawn_worker("w")
    await wait_for_event(driver.redis, driver.queue, job_id, "job.failed", 30)
    assert await driver.producer.retry(driver.queue, job_id) == "queued"
    await until(
        lambda: _failed_twice(driver, job_id),
        redis=driver.redis,
        stream=driver.producer.keys(driver.queue).job_events(job_id),
        timeout_s=30,
        what="the resumed attempt to fail in step three",
    )
    assert runs(path) == {"one": 1, "two": 1, "three": 2}
    assert await driver.producer.retry(driver.queue, job_id, from_start=True) == "queued"
    await wait_for_event(driver.redis, driver.queue, job_id, "job.succeeded", 30)
    assert runs(path) == {"one": 2, "two": 2, "three": 3}
    job = await driver.producer.get(driver.queue, job_id)
    assert job is not None and [s.attempt for s in job.steps] == [3, 3, 3]


async def _failed_twice(driver: Driver, job_id: str) -> bool:
    events = await driver.producer.events(driver.queue, job_id)
    return [e.event.value for e in events].count("job.failed") == 2


async def test_a_consumer_killed_inside_step_two_resumes_at_step_two(
    driver: Driver, spawn_worker: Callable[..., ManagedProcess], tmp_path: Path
) -> None:
    path = tmp_path / "runs"
    job_id = await driver.submit("pipeline", payload={"path": str(path), "crash_in_two": True})
    spawn_worker("victim")
    await wait_for_event(driver.redis, driver.queue, job_id, "job.started", 15)
    spawn_worker("survivor")
    assert await wait_for_terminal(driver.redis, driver.queue, {job_id}, 30) == {
        job_id: ["job.succeeded"]
    }
    assert runs(path) == {"one": 1, "two": 2, "three": 1}
    events = step_events(await driver.producer.events(driver.queue, job_id))
    assert (2, "one", "restored") in events and (2, "two", "started") in events


async def test_a_frozen_consumer_cannot_record_its_step_when_it_wakes(
    driver: Driver, spawn_worker: Callable[..., ManagedProcess], tmp_path: Path
) -> None:
    path = tmp_path / "runs"
    job_id = await driver.submit("pipeline", payload={"path": str(path), "pause_in_two": 2})
    frozen = spawn_worker("frozen")
    job_events = driver.producer.keys(driver.queue).job_events(job_id)

    async def in_step_two() -> bool:
        events = step_events(await driver.producer.events(driver.queue, job_id))
        return (1, "two", "started") in events

    await until(in_step_two, redis=driver.redis, stream=job_events, timeout_s=15, what="step two")
    os.kill(frozen.pid, signal.SIGSTOP)
    spawn_worker("other")
    assert await wait_for_terminal(driver.redis, driver.queue, {job_id}, 30) == {
        job_id: ["job.succeeded"]
    }
    os.kill(frozen.pid, signal.SIGCONT)  # wakes inside step two, believing it owns the job
    frozen.stop(grace_s=10)  # its late step write is tried, and refused
    events = await driver.producer.events(driver.queue, job_id)
    reclaimed_at = next(i for i, e in enumerate(events) if e.event.value == "job.reclaimed")
    assert all(e.attempt == 2 for e in events[reclaimed_at:])
    job = await driver.producer.get(driver.queue, job_id)
    assert job is not None and job.status is JobStatus.SUCCEEDED
    assert [(s.name, s.attempt) for s in job.steps] == [("one", 1), ("two", 2), ("three", 2)]


async def test_steps_from_a_def_handler_thread(
    driver: Driver, spawn_worker: Callable[..., ManagedProcess], tmp_path: Path
) -> None:
    path = tmp_path / "runs"
    job_id = await driver.submit("pipeline_def", payload={"path": str(path), "fail_second": 1})
    spawn_worker("w")
    assert await wait_for_terminal(driver.redis, driver.queue, {job_id}, 30) == {
        job_id: ["job.succeeded"]
    }
    assert runs(path) == {"a": 1, "b": 2}
    job = await driver.producer.get(driver.queue, job_id)
    assert job is not None and job.result == ["a", "b"]


async def test_a_step_name_used_twice_fails_the_job_at_once(
    driver: Driver, spawn_worker: Callable[..., ManagedProcess]
) -> None:
    job_id = await driver.submit("twice")
    spawn_worker("w")
    assert await wait_for_terminal(driver.redis, driver.queue, {job_id}, 30) == {
        job_id: ["job.failed"]
    }
    job = await driver.producer.get(driver.queue, job_id)
    assert job is not None and job.attempt == 1 and "unique" in (job.error or "")
    assert "job.retrying" not in await driver.event_types(job_id)
