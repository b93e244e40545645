"""Flows on real Redis and real worker processes: a parent runs exactly once, after all of its
children ended, whatever crashes, races or queues are involved; failures and cancels travel
up and down the tree. Runs are counted through a side effect (a line per real run)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conveyor.process import ManagedProcess
from producer import Producer
from schemas import JobStatus, SubmitRequest
from tests.integration.flow_scenarios import fan_in_survives_a_killed_consumer
from tests.integration.helpers import Driver, until, wait_for_event, wait_for_terminal


async def event_types(producer: Producer, queue: str, job_id: str) -> list[str]:
    return [e.event.value for e in await producer.events(queue, job_id)]


async def submit_flow(driver: Driver, parent: SubmitRequest) -> str:
    return (await driver.producer.submit(parent, tenant="t1")).job_id


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "frozen"])
async def test_a_flow_of_200_children_on_two_queues_survives_a_lost_consumer(
    driver: Driver, spawn_worker: Callable[..., ManagedProcess], tmp_path: Path, signum: int
) -> None:
    await fan_in_survives_a_killed_consumer(
        driver.producer, (driver.queue, f"{driver.queue}-b"), spawn_worker, tmp_path, signum
    )


async def test_a_failed_child_fails_its_parent_and_cancels_the_siblings(
    driver: Driver, spawn_worker: Callable[..., ManagedProcess], tmp_path: Path
) -> None:
    marker, parent_runs = tmp_path / "cleaned", tmp_path / "parent"
    parent = SubmitRequest(
        type="gather",
        queue=driver.queue,
        payload={"path": str(parent_runs)},
        children=[
            SubmitRequest(type="hang", queue=driver.queue, payload={"marker": str(marker)}),
            SubmitRequest(
                type="permanent", queue=driver.queue, payload={"reason": "no such video"}
            ),
        ],
    )
    parent_id = await submit_flow(driver, parent)
    hang_id, failing_id = (await driver.producer.children_of(driver.queue, parent_id)).keys()
    spawn_worker("w")
    await wait_for_event(driver.redis, driver.queue, hang_id, "job.started", 15)
    terminal = await wait_for_terminal(
        driver.redis, driver.queue, {parent_id, hang_id, failing_id}, 30
    )
    assert terminal == {
        parent_id: ["job.failed"],
        hang_id: ["job.cancelled"],
        failing_id: ["job.failed"],
    }
    job = await driver.producer.get(driver.queue, parent_id)
    assert job is not None and "no such video" in (job.error or "") and failing_id in job.error
    assert not parent_runs.exists()  # its handler never ran
    await until(
        marker.exists,
        redis=driver.redis,
        stream=driver.producer.keys(driver.queue).events,
        timeout_s=10,
        what="the cancelled sibling's cleanup",
    )
    dead = await driver.redis.xrange(driver.producer.keys(driver.queue).dead)
    assert (parent_id, "child_failed") in [(f["job_id"], f["reason"]) for _, f in dead]


async def test_continue_runs_the_parent_with_the_failure_visible(
    driver: Driver, spawn_worker: Callable[..., ManagedProcess]
) -> None:
    parent = SubmitRequest(
        type="gather",
        queue=driver.queue,
        on_child_failure="continue",
        children=[
            SubmitRequest(type="permanent", queue=driver.queue),
            SubmitRequest(type="tick", queue=driver.queue, payload={"i": 7}),
        ],
    )
    parent_id = await submit_flow(driver, parent)
    spawn_worker("w")
    terminal = await wait_for_terminal(driver.redis, driver.queue, {parent_id}, 30)
    assert sorted(terminal.values()) == [["job.failed"], ["job.succeeded"], ["job.succeeded"]]
    assert terminal[parent_id] == ["job.succeeded"]
    job = await driver.producer.get(driver.queue, parent_id)
    assert job is not None
    assert job.result == {"statuses": {"failed": 1, "succeeded": 1}, "results": [7]}
    assert job.children is not None and (job.children.failed, job.children.succeeded) == (1, 1)


async def test_cancelling_a_parent_cancels_its_unfinished_tree(
    driver: Driver, spawn_worker: Callable[..., ManagedProcess]
) -> None:
    q = driver.queue
    grandchildren = [SubmitRequest(type="hang", queue=q) for _ in range(2)]
    parent = SubmitRequest(
        type="gather",
        queue=q,
        children=[
            SubmitRequest(type="gather", queue=q, children=grandchildren),
            SubmitRequest(type="tick", queue=q, payload={"i": 1, "seconds": 60}),
            SubmitRequest(type="tick", queue=q, payload={"i": 2}, max_attempts=1),
        ],
    )
    parent_id = await submit_flow(driver, parent)
    children = await driver.producer.children_of(q, parent_id)
    middle_id = next(i for i, c in children.items() if c["type"] == "gather")
    leaves = set(await driver.producer.children_of(q, middle_id))
    spawn_worker("w")
    for leaf in leaves:
        await wait_for_event(driver.redis, q, leaf, "job.started", 15)
    slow_id = next(i for i, c in children.items() if c["type"] == "tick" and i != middle_id)
    await wait_for_event(driver.redis, q, slow_id, "job.started", 15)
    assert await driver.producer.cancel(q, parent_id) == "cancelled"
    everyone = {parent_id, *children, *leaves}
    terminal = await wait_for_terminal(driver.redis, q, everyone, 30)
    quick_id = next(i for i, c in children.items() if c["type"] == "tick" and i != slow_id)
    assert terminal.pop(quick_id) in (["job.succeeded"], ["job.cancelled"])  # it may have won
    assert terminal == {job_id: ["job.cancelled"] for job_id in everyone - {quick_id}}


async def test_racing_carriers_release_the_parent_exactly_once(
    driver: Driver, producer: Producer
) -> None:
    q = driver.queue
    parent = SubmitRequest(
        type="gather", queue=q, children=[SubmitRequest(type="noop", queue=q) for _ in range(50)]
    )
    parent_id = await submit_flow(driver, parent)
    entries = await driver.deliver()
    deliveries = await producer.start(q, entries, "c1")
    assert len(deliveries) == 50
    # Every child ends in one batch: fifty child_ended tasks at the same moment.
    assert all(await producer.succeed_many([(d, {"ok": True}, []) for d in deliveries]))
    flow = producer.keys(q).flow
    tasks = [fields for _, fields in await driver.redis.xrange(flow)]
    assert len(tasks) == 50
    await producer.ensure_group(q, "flow")
    carried = await asyncio.gather(
        producer.flows.tell_parents(tasks),
        producer.flows.tell_parents(list(reversed(tasks))),
        producer.flows.carry(q, "c1", block_ms=10, reclaim_idle_ms=60_000),
        producer.flows.carry(q, "c2", block_ms=10, reclaim_idle_ms=60_000),
    )
    assert carried[2] + carried[3] == 50  # each task was read by exactly one carrier
    kinds = await event_types(producer, q, parent_id)
    assert kinds.count("job.child_ended") == 50 and kinds.count("job.queued") == 1
    assert await driver.status(parent_id) is JobStatus.QUEUED
    assert await driver.redis.xlen(flow) == 0  # carried tasks are deleted


async def test_a_child_never_created_counts_as_cancelled(
    driver: Driver, producer: Producer, redis: Any
) -> None:
    q = driver.queue
    quick = Producer(redis, producer.settings.model_copy(update={"flow_check_s": 0.001}))
    parent = SubmitRequest(
        type="gather",
        queue=q,
        on_child_failure="continue",
        children=[SubmitRequest(type="noop", queue=q) for _ in range(2)],
    )
    parent_id = (await quick.submit(parent, tenant="t1")).job_id
    lost_id, kept_id = await quick.children_of(q, parent_id)
    # As if the submit had stopped before creating the first child.
    await redis.delete(quick.keys(q).job(lost_id), quick.keys(q).job_events(lost_id))
    assert await quick.flows.check_waiting(q) == 1
    job = await quick.get(q, parent_id)
    assert job is not None and job.status is JobStatus.WAITING
    assert job.children is not None and (job.children.cancelled, job.children.pending) == (1, 1)
    await quick.cancel(q, kept_id)  # told to the parent at once
    assert await driver.status(parent_id) is JobStatus.QUEUED
    seen = await quick.children_of(q, parent_id)
    assert seen[lost_id]["status"] == "cancelled" and seen[kept_id]["status"] == "cancelled"


async def test_a_follow_up_job_is_submitted_once_across_attempts(
    driver: Driver, spawn_worker: Callable[..., ManagedProcess]
) -> None:
    job_id = await driver.submit("gather", payload={"follow_up": "tick", "fail_first": True})
    spawn_worker("w")
    await wait_for_event(driver.redis, driver.queue, job_id, "job.succeeded", 30)
    job = await driver.producer.get(driver.queue, job_id)
    assert job is not None and job.attempt == 2
    page = await driver.producer.list_jobs([driver.queue], "t1", limit=100, job_type="tick")
    assert [j.id for j in page.jobs] == [job.result["follow_up"]]  # one, from both attempts


async def test_a_follow_up_that_does_not_fit_its_type_fails_the_job_at_once(
    driver: Driver, spawn_worker: Callable[..., ManagedProcess]
) -> None:
    job_id = await driver.submit("submit_bad")
    spawn_worker("w")
    assert await wait_for_terminal(driver.redis, driver.queue, {job_id}, 30) == {
        job_id: ["job.failed"]
    }
    job = await driver.producer.get(driver.queue, job_id)
    assert job is not None and job.attempt == 1 and "nope" in (job.error or "")
    page = await driver.producer.list_jobs([driver.queue], "t1", limit=10, job_type="tick")
    assert page.jobs == []  # nothing was submitted
