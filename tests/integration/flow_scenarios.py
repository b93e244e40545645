"""A flow scenario run on a single Redis (test_flows.py) and on a Redis Cluster with its two
queues on different masters (test_cluster.py)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

from conveyor.process import ManagedProcess
from producer import Producer
from schemas import JobStatus, SubmitRequest
from tests.integration.helpers import until, wait_for_terminal


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def fan_in_survives_a_killed_consumer(
    producer: Producer,
    queues: tuple[str, str],
    spawn: Callable[..., ManagedProcess],
    tmp_path: Path,
    signum: int = signal.SIGKILL,
) -> None:
    """A parent on queue A with 200 children over queues A and B, three consumers (two on A,
    one on B), the first SIGKILLed (or SIGSTOPped, and woken once the parent ended) while it
    holds children: the parent runs exactly once, after every child ended, and sees all 200
    results; every child ends exactly once."""
    queue_a, queue_b = queues
    child_runs, parent_runs = tmp_path / "children", tmp_path / "parent"
    children = [
        SubmitRequest(
            type="tick",
            queue=queue_a if i % 2 else queue_b,
            payload={"i": i, "seconds": 0.1, "path": str(child_runs)},
        )
        for i in range(200)
    ]
    parent = SubmitRequest(
        type="gather", queue=queue_a, payload={"path": str(parent_runs)}, children=children
    )
    parent_id = (await producer.submit(parent, tenant="t1")).job_id
    snapshot = await producer.get(queue_a, parent_id)
    assert snapshot is not None and snapshot.status is JobStatus.WAITING
    assert snapshot.children is not None and snapshot.children.pending == 200

    victim = spawn("victim", CONVEYOR_CONCURRENCY="4")
    spawn("b", queue=queue_b, CONVEYOR_CONCURRENCY="4")

    async def some_children_ended() -> bool:
        job = await producer.get(queue_a, parent_id)
        return job is not None and job.children is not None and job.children.pending < 170

    parent_events = producer.keys(queue_a).job_events(parent_id)
    await until(
        some_children_ended,
        redis=producer.redis,
        stream=parent_events,
        timeout_s=30,
        what="30 children to end",
    )
    os.kill(victim.pid, signum)  # mid-run: it holds up to 4 children
    spawn("survivor", CONVEYOR_CONCURRENCY="8")
    child_ids = set(await producer.children_of(queue_a, parent_id))
    terminal = await wait_for_terminal(producer.redis, queue_a, {parent_id}, 90)
    assert terminal.pop(parent_id) == ["job.succeeded"]
    terminal = {job_id: ends for job_id, ends in terminal.items() if job_id in child_ids}
    terminal_b = await wait_for_terminal(producer.redis, queue_b, child_ids - set(terminal), 5)
    terminal_b = {job_id: ends for job_id, ends in terminal_b.items() if job_id in child_ids}
    # Every child ended exactly once, on its own queue.
    assert len(terminal) == len(terminal_b) == 100
    assert all(ends == ["job.succeeded"] for ends in [*terminal.values(), *terminal_b.values()])

    if signum == signal.SIGSTOP:  # it wakes believing it holds its children, and stops
        victim.signal(signal.SIGCONT)
        victim.stop(grace_s=10)
    assert len(lines(parent_runs)) == 1  # the parent ran exactly once
    job = await producer.get(queue_a, parent_id)
    assert job is not None
    assert job.result == {"statuses": {"succeeded": 200}, "results": list(range(200))}
    assert job.children is not None and (job.children.pending, job.children.succeeded) == (0, 200)
    kinds = [e.event.value for e in await producer.events(queue_a, parent_id)]
    assert kinds.count("job.child_ended") == 200
    assert kinds.count("job.queued") == 1 and kinds.count("job.started") == 1
    assert "job.child_ended" not in kinds[kinds.index("job.started") :]  # started after all
    ran = {line.split()[1] for line in lines(child_runs)}
    assert ran == {str(i) for i in range(200)}  # every child ran (some twice: the victim's)
