"""Flows: a parent waits (`waiting`) until every child has ended, then runs, exactly once.

Children may live on other queues, hence in other Redis Cluster slots, so no one script can
see a child end and release its parent. Instead the script that ends a child also writes a
`child_ended` task into the child's queue's flow stream (`conveyor:{q}:flow`, `job_ended` in
scripts/includes/common.lua); workers read that stream in the group `flow` and carry each
task to the parent's slot, where `child_ended.lua` counts the child once, whatever crashes
or repeats: its record in the parent's children hash turns from `pending` to its status
exactly once, and the last one releases the parent. A task is acknowledged only after it was
carried out; one a worker died holding is claimed by another after a visibility timeout.

Cancelling works the same way down the tree: the script that cancels (or fails) a parent
writes a `cancel_children` task; whoever cancels carries it out at once, and the queue's
workers again should that caller stop half-way (cancelling an ended child changes nothing).

What no task can cover, `check_waiting` does: a submit cut short between creating a parent
and its children leaves children that will never exist; a waiting parent's children are
checked some time after it was created, and one that does not exist counts as cancelled.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from schemas.errors import ConveyorError, IdempotencyConflict
from schemas.keys import FLOW_GROUP, TASK_CANCEL_CHILDREN, TASK_CHILD_ENDED
from schemas.models import SubmitRequest
from schemas.status import TERMINAL, JobStatus

if TYPE_CHECKING:
    from producer.producer import JobRef, Producer, Submitted

PENDING = "pending"  # a child's state in its parent's children hash until its end arrives
LOST = "never created, or lost: it counts as cancelled"
RECHECK_S = 3600.0  # after the first check, how often a waiting parent's children are

# Flow tasks carried per round of three round trips (read, child_ended, ack). While a big
# flow is being submitted, each round trip waits 3-7 ms behind the submit's pipeline and
# the lanes' batches; 64 a round then carried half as fast as children ended, and a
# 10,000-child parent started 200-350 ms after its last child (bench.fan_in), 10-20 ms at 256.
CARRY_BATCH = 256


class Flows:
    """The flow writes of one job store (`Producer.flows`)."""

    def __init__(self, producer: Producer) -> None:
        self._store = producer

    # --- creating a flow ---------------------------------------------------------------

    async def submit(
        self,
        request: SubmitRequest,
        tenant: str,
        idempotency_key: str | None,
        count_active: bool = False,
        trace: str = "",
    ) -> Submitted:
        """Create the flow top down, one round trip per level: each parent lists its
        children's ids when it is created (`waiting`), so the fan-in never depends on
        when a child is created, and a child can only end after its parent exists. Every
        job of the flow keeps the submit's `trace`: the children's attempts are in the
        parent's trace."""
        from producer.producer import JobRef, Submitted, new_job_id

        store = self._store
        request = request.with_queues(request.queue)
        ids: dict[int, str] = {id(job): new_job_id() for job in request.flow()}

        def call(job: SubmitRequest, parent: JobRef | None, idem: str | None) -> Any:
            children = [JobRef(child.queue, ids[id(child)]) for child in job.children]
            return store._submit_call(
                job,
                tenant,
                idem,
                job_id=ids[id(job)],
                parent=parent,
                children=children,
                count=count_active,
                trace=trace,
            )

        created, root_id, *_ = await store.scripts.run(
            "submit", *call(request, None, idempotency_key)
        )
        if int(created) < 0:
            raise IdempotencyConflict(idempotency_key or "")
        if int(created) != 1:  # an earlier submit with this key, or the cache: nothing new
            return Submitted(root_id, request.queue, False, cached=int(created) == 2)
        level = [(request, JobRef(request.queue, root_id))]
        while level:
            below = [
                (child, JobRef(child.queue, ids[id(child)]), ref)
                for job, ref in level
                for child in job.children
            ]
            if below:
                await store.scripts.run_many(
                    [("submit", *call(child, parent, None)) for child, _, parent in below]
                )
            level = [(child, ref) for child, ref, _ in below]
        return Submitted(root_id, request.queue, True)

    # --- carrying out flow tasks ---------------------------------------------------------

    async def carry(self, queue: str, consumer: str, *, block_ms: int, reclaim_idle_ms: int) -> int:
        """Carry out a few of the queue's flow tasks (waiting up to `block_ms` for one, then
        taking over those a dead worker left), acknowledging each once done. Returns how
        many were carried out."""
        rows = await self._store.group_rows(
            self._store.keys(queue).flow,
            FLOW_GROUP,
            consumer,
            CARRY_BATCH,
            block_ms,
            reclaim_idle_ms,
        )
        ended = [fields for _, fields in rows if fields.get("task") == TASK_CHILD_ENDED]
        await self.tell_parents(ended)
        for _, fields in rows:
            if fields.get("task") == TASK_CANCEL_CHILDREN:
                await self.cancel_children(queue, fields["parent_id"], fields["reason"])
        if rows:
            await self._store.ack_flow_tasks(queue, [entry_id for entry_id, _ in rows])
        return len(rows)

    async def tell_parents(self, tasks: Sequence[dict[str, str]]) -> None:
        """Run `child_ended` on each task's parent (one round trip for all), and cancel the
        unfinished siblings of the children whose failure failed their parent."""
        store = self._store
        calls = []
        for task in tasks:
            k, parent_id = store.keys(task["parent_queue"]), task["parent_id"]
            keys = [
                k.jobs,
                k.events,
                k.job(parent_id),
                k.job_events(parent_id),
                k.job_children(parent_id),
                k.flow,
                k.dead,
                k.waiting,
            ]
            args = [*store.config, task["child_id"], task["status"], task.get("error", "")]
            calls.append(("child_ended", keys, args))
        replies = await store.scripts.run_many(calls) if calls else []
        for task, reply in zip(tasks, replies, strict=True):
            if reply[0] == JobStatus.FAILED:
                reason = f"cancelled: its parent failed with child {task['child_id']}"
                await self.cancel_children(task["parent_queue"], task["parent_id"], reason)

    async def cancel_children(self, queue: str, parent_id: str, reason: str) -> None:
        """Cancel a parent's unfinished children, and theirs (a waiting child's own
        cancel cascades the same way)."""
        store = self._store
        for child in await self.pending_children(queue, parent_id):
            try:
                outcome = await store.cancel_one(child.queue, child.job_id, reason)
            except ConveyorError:  # it ended (or expired) since: nothing to cancel
                continue
            if outcome == "cascade":
                await self.cancel_children(child.queue, child.job_id, reason)

    async def pending_children(self, queue: str, parent_id: str) -> list[JobRef]:
        from producer.producer import JobRef

        records = await self._store.redis.hgetall(  # type: ignore[misc]
            self._store.keys(queue).job_children(parent_id)
        )
        return [
            JobRef(record["queue"], child_id)
            for child_id, raw in records.items()
            if (record := json.loads(raw))["status"] == PENDING
        ]

    async def tell_parent_of(self, queue: str, job_id: str) -> None:
        """A job just ended here, outside a worker (a cancel from the gateway): tell its
        parent now rather than when a worker of its queue carries the task (if one ever
        does: a queue may have no worker at all). The task stays; carried again, it
        changes nothing."""
        fields = await self._store.redis.hmget(  # type: ignore[misc]
            self._store.keys(queue).job(job_id), ["parent_id", "parent_queue", "status", "error"]
        )
        parent_id, parent_queue, status, error = fields
        if parent_id and status in TERMINAL:
            task = {
                "parent_queue": parent_queue,
                "parent_id": parent_id,
                "child_id": job_id,
                "status": status,
                "error": error or "",
            }
            await self.tell_parents([task])

    # --- what no task covers -------------------------------------------------------------

    async def check_waiting(self, queue: str, limit: int = 16) -> int:
        """Check the children of the queue's parents that are due a check: a child that does
        not exist counts as cancelled; one that ended but whose end never reached its
        parent (a task lost with a failed-over Redis) is told again. Returns how many
        parents were checked."""
        store = self._store
        k = store.keys(queue)
        now = time.time()
        due = await store.redis.zrangebyscore(k.waiting, "-inf", int(now * 1000), 0, limit)
        for parent_id in due:
            pending = await self.pending_children(queue, parent_id)
            by_queue: dict[str, list[str]] = defaultdict(list)
            for child in pending:
                by_queue[child.queue].append(child.job_id)
            tasks = []
            for child_queue, child_ids in by_queue.items():
                states = await store.child_states(child_queue, child_ids)
                for child_id, (status, error) in zip(child_ids, states, strict=True):
                    if status is None or status in TERMINAL:
                        tasks.append(
                            {
                                "parent_queue": queue,
                                "parent_id": parent_id,
                                "child_id": child_id,
                                "status": status or JobStatus.CANCELLED,
                                "error": error if status else LOST,
                            }
                        )
            await self.tell_parents(tasks)
            # XX: a parent that left `waiting` meanwhile is not put back.
            await store.redis.zadd(k.waiting, {parent_id: int((now + RECHECK_S) * 1000)}, xx=True)
        return len(due)
