"""Every read of a queue's keys: snapshots, histories, replay, listings, statistics,
idempotency lookups and the events a gateway fans out. `Producer` (the writes) is built on
this class, so the gateway, the consumers and the CLI hold one object for the job store.

One decoding rule: the store's clients decode replies (`decode_responses=True`, as
`producer.connection.redis_from_url` makes them), so every value read here is `str`.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import ResponseError

from schemas.keys import CONSUMER_GROUP, FAILURE_GROUP, QueueKeys
from schemas.models import Event, Job, JobIdentity
from schemas.schedules import Schedule
from schemas.settings import Settings
from schemas.status import JobStatus
from schemas.stream_id import parse_id

REPLAY_PAGE = 500
# Entries a listing examines per request at most: a rare filter returns a short page with a
# cursor rather than making one request slow.
LISTING_SCAN_BUDGET = 2000

EventRows = list[tuple[str, dict[str, str]]]
"""Raw entries of an events stream, (entry id, fields), for the hub to parse one by one."""


@dataclass(frozen=True, slots=True)
class QueueStats:
    length: int  # entries in the jobs stream: undelivered + pending
    delayed: int
    next_due_ms: int | None
    dead: int
    events: int
    seen_ms: dict[str, int]  # consumer -> when it last marked itself alive
    group: dict[str, Any] | None  # XINFO GROUPS of `workers`; None before the first worker
    backlog: int = 0  # queued jobs waiting in the ordered backlog (priorities, fair turns)

    @property
    def pending(self) -> int:
        return int(self.group["pending"]) if self.group else 0

    @property
    def lag(self) -> int:
        """Entries no consumer has read. Finished entries are deleted on ack, so the stream
        holds exactly the undelivered and the pending ones: exact even where XINFO GROUPS
        reports lag as nil (it does once the last delivered entry has been deleted)."""
        return max(0, self.length - self.pending)


@dataclass(frozen=True, slots=True)
class QueueOverview:
    queue: str
    stats: QueueStats
    paused: bool
    waiting: int  # parents waiting for their children
    finished: list[tuple[int, dict[str, int]]]  # (minute's start, ms) -> ends by status


@dataclass(frozen=True, order=True, slots=True)
class Position:
    """Where a listing stands in a tenant's index: (creation ms, job id), newest first."""

    score: int
    job_id: str


@dataclass(frozen=True, slots=True)
class Page:
    jobs: list[Job]
    next: Position | None


class Reads:
    """The job store's reads, for every queue of one Redis."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        if not redis.get_encoder().decode_responses:  # type: ignore[no-untyped-call]
            raise ValueError("the job store reads text: connect with decode_responses=True")
        self.redis = redis
        self.settings = settings

    def keys(self, queue: str) -> QueueKeys:
        return QueueKeys(queue, self.settings.key_prefix)

    # --- one job ------------------------------------------------------------------------

    async def get(self, queue: str, job_id: str) -> Job | None:
        (job,) = await self.get_many([(queue, job_id)])
        return job

    async def get_many(self, refs: Sequence[tuple[str, str]]) -> list[Job | None]:
        """The snapshots of (queue, job id) pairs: one round trip, and a second for the steps
        of those that have steps."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for queue, job_id in refs:
                pipe.hgetall(self.keys(queue).job(job_id))
            replies: list[dict[str, str]] = await pipe.execute()
        with_steps = [i for i, fields in enumerate(replies) if fields.get("steps") == "1"]
        steps: dict[int, dict[str, str]] = {}
        if with_steps:
            async with self.redis.pipeline(transaction=False) as pipe:
                for i in with_steps:
                    pipe.hgetall(self.keys(refs[i][0]).job_steps(refs[i][1]))
                steps = dict(zip(with_steps, await pipe.execute(), strict=True))
        return [
            Job.from_hash(fields, steps.get(i)) if fields else None
            for i, fields in enumerate(replies)
        ]

    async def find(self, job_id: str, queues: Sequence[str] | None = None) -> Job | None:
        """The job with this id in any of `queues` (default: the configured ones)."""
        for queue in queues or self.settings.queues:
            job = await self.get(queue, job_id)
            if job is not None:
                return job
        return None

    async def events(
        self,
        queue: str,
        job_id: str,
        after: str | None = None,
        count: int | None = None,
        *,
        before: str | None = None,
    ) -> list[Event]:
        """The job's own event history, after `after` and before `before` (both exclusive)
        when given. Its entries leave out who the job is, so the hash is read in the same
        round trip to say it; the two expire together, so a job with no hash has no history
        left either."""
        k = self.keys(queue)
        start = f"({after}" if after else "-"
        end = f"({before}" if before else "+"
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(k.job(job_id), ["type", "tenant"])
            pipe.xrange(k.job_events(job_id), start, end, count)
            (job_type, tenant), entries = await pipe.execute()
        if job_type is None:
            return []
        job = JobIdentity(job_id, queue, job_type, tenant or "")
        return [Event.from_entry(entry_id, fields, job) for entry_id, fields in entries]

    async def history_reaches(self, queue: str, job_id: str, entry_id: str) -> bool:
        """Whether the job's own stream still holds everything after `entry_id`: it is capped
        too, and a replay from an id it no longer reaches back to would have a hole."""
        head = await self.redis.xrange(self.keys(queue).job_events(job_id), "-", "+", count=1)
        return bool(head) and parse_id(head[0][0]) <= parse_id(entry_id)

    async def follow(self, queue: str, job_id: str, block_ms: int = 5000) -> AsyncIterator[Event]:
        """The job's events from its first, then live as they come, until it ends (for
        `conveyor submit --wait`)."""
        k = self.keys(queue)
        job_type, tenant = await self.redis.hmget(  # type: ignore[misc]
            k.job(job_id), ["type", "tenant"]
        )
        job = JobIdentity(job_id, queue, job_type or "", tenant or "")
        last_id = "0"
        while True:
            reply = await self.redis.xread({k.job_events(job_id): last_id}, block=block_ms)
            for _, rows in reply or ():
                for entry_id, fields in rows:
                    last_id = entry_id
                    event = Event.from_entry(entry_id, fields, job)
                    yield event
                    if event.event.is_terminal:
                        return

    async def idempotent_job(self, queue: str, tenant: str, key: str) -> Job | None:
        """The tenant's job that an earlier submit with `key` created in `queue`, if it is
        still there. A job found under the key but owned by anyone else is not returned."""
        job_id = await self.redis.get(self.keys(queue).idempotency(tenant, key))
        job = await self.get(queue, job_id) if job_id else None
        return job if job is not None and job.tenant == tenant else None

    # --- a tenant's jobs ------------------------------------------------------------------

    async def list_jobs(
        self,
        queues: Sequence[str],
        tenant: str,
        *,
        limit: int,
        after: Position | None = None,
        status: JobStatus | None = None,
        job_type: str | None = None,
    ) -> Page:
        """A tenant's jobs newest first, from the per-queue index zsets (scored by creation
        ms), merged across `queues`. A page resumes strictly after `after`, in (score desc,
        id desc) order -- Redis's own order for ZREVRANGEBYSCORE -- so no job is missed or
        repeated, whatever is submitted meanwhile. Filters apply to the snapshots; a request
        examines at most LISTING_SCAN_BUDGET entries and may return a short page."""
        filtered = status is not None or job_type is not None
        batch = max(limit + 1, 100) if filtered else limit + 1
        found: list[tuple[Position, Job]] = []
        position = after
        scanned = 0
        while True:
            candidates: list[tuple[Position, str]] = []
            for queue in queues:
                index = self.keys(queue).tenant_jobs(tenant)
                candidates += [(p, queue) for p in await self._before(index, position, batch)]
            if not candidates:
                return Page([job for _, job in found], None)
            candidates.sort(key=lambda c: c[0], reverse=True)
            candidates = candidates[:batch]
            async with self.redis.pipeline(transaction=False) as pipe:
                for p, queue in candidates:
                    pipe.hgetall(self.keys(queue).job(p.job_id))
                hashes = await pipe.execute()
            for (p, _), fields in zip(candidates, hashes, strict=True):
                position = p
                scanned += 1
                if not fields:  # expired: its index entry outlived it
                    continue
                job = Job.from_hash(fields)
                if job.tenant != tenant:  # an index holds only its tenant's: checked anyway
                    continue
                if (status is None or job.status is status) and (
                    job_type is None or job.type == job_type
                ):
                    found.append((p, job))
                    if len(found) > limit:
                        return Page([job for _, job in found[:limit]], found[limit - 1][0])
            if scanned >= LISTING_SCAN_BUDGET:
                return Page([job for _, job in found], position)

    async def _before(self, key: str, after: Position | None, count: int) -> list[Position]:
        """Up to `count` index entries strictly after `after`, in page order."""
        if after is None:
            rows = await self.redis.zrevrangebyscore(
                key, "+inf", "-inf", start=0, num=count, withscores=True
            )
            return [Position(int(score), member) for member, score in rows]
        ties = await self.redis.zrangebyscore(key, after.score, after.score)
        same = sorted((m for m in ties if m < after.job_id), reverse=True)[:count]
        rows = await self.redis.zrevrangebyscore(
            key, f"({after.score}", "-inf", start=0, num=count, withscores=True
        )
        return [Position(after.score, m) for m in same] + [
            Position(int(score), member) for member, score in rows
        ]

    # --- the queues' events streams (the gateway's hub and firehose replay) --------------

    def event_stream_groups(self, queues: Sequence[str]) -> list[list[str]]:
        """The queues whose events streams one XREAD may cover together: all of them on one
        Redis; on a Redis Cluster, those of one hash slot (a command's keys share a slot)."""
        if not isinstance(self.redis, RedisCluster):
            return [list(queues)]
        by_slot: dict[int, list[str]] = {}
        for queue in queues:
            by_slot.setdefault(key_slot(self.keys(queue).events.encode()), []).append(queue)
        return list(by_slot.values())

    async def event_stream_tails(self, queues: Sequence[str]) -> dict[str, str]:
        """Each queue's events stream's last id ('0-0' for a stream not made yet): where a
        reader starts so that nothing slips between two XREADs."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.xrevrange(self.keys(queue).events, "+", "-", count=1)
            tails = await pipe.execute()
        return {
            queue: (rows[0][0] if rows else "0-0")
            for queue, rows in zip(queues, tails, strict=True)
        }

    async def read_events(
        self, positions: dict[str, str], count: int, block_ms: int | None
    ) -> list[tuple[str, EventRows]]:
        """One XREAD of the queues' events streams after `positions` (queue -> id); per
        queue with news, its raw entries."""
        streams: dict[Any, Any] = {self.keys(q).events: pos for q, pos in positions.items()}
        queue_of = {self.keys(q).events: q for q in positions}
        reply = await self.redis.xread(streams, count=count, block=block_ms)
        return [(queue_of[stream], rows) for stream, rows in reply or () if rows]

    async def event_stream_head(self, queue: str) -> str | None:
        """The oldest id the queue's (capped) events stream still holds."""
        head = await self.redis.xrange(self.keys(queue).events, "-", "+", count=1)
        return head[0][0] if head else None

    async def queue_events_after(self, queues: Sequence[str], after: str) -> AsyncIterator[Event]:
        """The queues' events streams after `after`, merged in id order, a page at a time."""
        streams = {self.keys(q).events: q for q in queues}
        cursors = dict.fromkeys(streams, after)
        buffers: dict[str, EventRows] = {stream: [] for stream in streams}
        exhausted: set[str] = set()
        while True:
            for stream, buffer in buffers.items():
                if not buffer and stream not in exhausted:
                    rows = await self.redis.xrange(
                        stream, f"({cursors[stream]}", "+", count=REPLAY_PAGE
                    )
                    buffer.extend(rows)
                    if rows:
                        cursors[stream] = rows[-1][0]
                    if len(rows) < REPLAY_PAGE:
                        exhausted.add(stream)
            heads = [(parse_id(b[0][0]), s) for s, b in buffers.items() if b]
            if not heads:
                return
            _, stream = min(heads)
            entry_id, fields = buffers[stream].pop(0)
            yield Event.from_entry(entry_id, fields)

    # --- what a consumer reads ----------------------------------------------------------

    async def fetch(
        self, queue: str, consumer: str, count: int, block_ms: int
    ) -> list[tuple[str, str]]:
        """(entry id, job id) of up to `count` entries never delivered to any consumer,
        waiting up to `block_ms` for the first (XREADGROUP … BLOCK … >)."""
        reply = await self.redis.xreadgroup(
            CONSUMER_GROUP, consumer, {self.keys(queue).jobs: ">"}, count=count, block=block_ms
        )
        return [
            (entry, fields.get("job_id", "")) for _, rows in reply or () for entry, fields in rows
        ]

    async def dead_letters(
        self, queue: str, consumer: str, count: int, block_ms: int, reclaim_idle_ms: int
    ) -> EventRows:
        """Dead-letter entries for this consumer's `on_failure` hooks, in their own group:
        new ones first, else ones a consumer that died mid-hook left unacknowledged. An
        entry trimmed while pending comes with empty fields."""
        return await self.group_rows(
            self.keys(queue).dead, FAILURE_GROUP, consumer, count, block_ms, reclaim_idle_ms
        )

    async def group_rows(
        self,
        stream: str,
        group: str,
        consumer: str,
        count: int,
        block_ms: int,
        reclaim_idle_ms: int,
    ) -> EventRows:
        """Entries of a stream read in a group (dead letters, flow tasks): new ones first,
        waiting up to `block_ms`, else ones a consumer that died left unacknowledged. An
        entry deleted while pending comes with empty fields."""
        reply = await self.redis.xreadgroup(
            group, consumer, {stream: ">"}, count=count, block=block_ms
        )
        rows = [row for _, stream_rows in reply or () for row in stream_rows]
        if not rows:
            _, rows, _ = await self.redis.xautoclaim(
                stream, group, consumer, reclaim_idle_ms, count=count
            )
        return [(entry_id, fields or {}) for entry_id, fields in rows]

    # --- schedules ------------------------------------------------------------------------

    async def schedules(self, queue: str, tenant: str | None = None) -> list[Schedule]:
        """The queue's schedules (a tenant's, when given), with their last and next ticks."""
        k = self.keys(queue)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(k.schedules)
            pipe.hgetall(k.schedule_ticks)
            definitions, ticks = await pipe.execute()
        found = []
        for key, raw in sorted(definitions.items()):
            schedule = Schedule.model_validate_json(raw)
            if tenant is not None and schedule.tenant != tenant:
                continue
            state = json.loads(ticks.get(key) or "{}")
            found.append(
                schedule.model_copy(
                    update={"last_run_at": state.get("last"), "next_run_at": state.get("next")}
                )
            )
        return found

    # --- flows ---------------------------------------------------------------------------

    async def tenant_active(self, queues: Sequence[str], tenant: str) -> int:
        """The tenant's unfinished jobs over `queues`, as counted while
        CONVEYOR_TENANT_MAX_ACTIVE is set."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.get(self.keys(queue).tenant_active(tenant))
            counts = await pipe.execute()
        return sum(int(n or 0) for n in counts)

    async def tenant_of(self, queue: str, job_id: str) -> str:
        tenant = await self.redis.hget(self.keys(queue).job(job_id), "tenant")  # type: ignore[misc]
        return tenant or ""

    async def child_states(
        self, queue: str, job_ids: Sequence[str]
    ) -> list[tuple[str | None, str]]:
        """(status, error) of each job, status None for one that does not exist."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hmget(self.keys(queue).job(job_id), ["status", "error"])
            replies = await pipe.execute()
        return [(status, error or "") for status, error in replies]

    async def children_of(self, queue: str, job_id: str) -> dict[str, dict[str, Any]]:
        """A parent's children as its handler sees them (`ctx.children`): child id ->
        {type, status, result, error}. A child whose snapshot expired keeps the status its
        parent recorded, without its result."""
        records = await self.redis.hgetall(self.keys(queue).job_children(job_id))  # type: ignore[misc]
        refs = [(json.loads(raw)["queue"], child_id) for child_id, raw in records.items()]
        async with self.redis.pipeline(transaction=False) as pipe:
            for child_queue, child_id in refs:
                pipe.hmget(
                    self.keys(child_queue).job(child_id), ["type", "status", "result", "error"]
                )
            replies = await pipe.execute()
        children = {}
        for (_, child_id), (job_type, status, result, error) in zip(refs, replies, strict=True):
            children[child_id] = {
                "type": job_type,
                "status": status or json.loads(records[child_id])["status"],
                "result": json.loads(result) if result else None,
                "error": error or None,
            }
        return children

    # --- the queue at a glance ------------------------------------------------------------

    async def paused(self, queue: str) -> bool:
        # GET, not EXISTS: redis-py's cluster client splits EXISTS (a multi-key command)
        # into a pipeline by slot, which fails with an AttributeError rather than a
        # ConnectionError while every node is down, and would end the consumer loop.
        return await self.redis.get(self.keys(queue).paused) is not None

    async def overview(self, queue: str) -> QueueOverview:
        """`GET /v1/queues`: the queue's figures, and its last hour's ends per minute."""
        k = self.keys(queue)
        stats = await self.stats(queue)
        minute = int(time.time() // 60)
        minutes = list(range(minute - 59, minute + 1))
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(k.paused)
            pipe.zcard(k.waiting)
            for m in minutes:
                pipe.hgetall(k.finished(m))
            paused, waiting, *finished = await pipe.execute()
        return QueueOverview(
            queue=queue,
            stats=stats,
            paused=bool(paused),
            waiting=int(waiting),
            finished=[
                (m * 60_000, {status: int(n) for status, n in counts.items()})
                for m, counts in zip(minutes, finished, strict=True)
            ],
        )

    async def stats(self, queue: str) -> QueueStats:
        """For `/metrics` and `conveyor inspect`: one round trip for the counts, one for the
        group."""
        k = self.keys(queue)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xlen(k.jobs)
            pipe.zcard(k.delayed)
            pipe.zrange(k.delayed, 0, 0, withscores=True)
            pipe.xlen(k.dead)
            pipe.xlen(k.events)
            pipe.hgetall(k.consumer_seen())
            pipe.zcard(k.backlog)
            length, delayed, next_due, dead, events, seen, backlog = await pipe.execute()
        try:
            groups = await self.redis.xinfo_groups(k.jobs)
        except ResponseError:  # no stream yet
            groups = []
        return QueueStats(
            length=int(length),
            delayed=int(delayed),
            next_due_ms=int(next_due[0][1]) if next_due else None,
            dead=int(dead),
            events=int(events),
            seen_ms={name: int(ms) for name, ms in seen.items()},
            group=next((g for g in groups if g["name"] == CONSUMER_GROUP), None),
            backlog=int(backlog),
        )

    async def consumers(self, queue: str) -> list[dict[str, Any]]:
        """XINFO CONSUMERS of the group: name, pending, idle (ms)."""
        return list(await self.redis.xinfo_consumers(self.keys(queue).jobs, CONSUMER_GROUP))

    async def oldest_pending(self, queue: str, count: int) -> list[dict[str, Any]]:
        """The group's oldest pending entries: message_id, consumer, time_since_delivered,
        times_delivered."""
        return list(
            await self.redis.xpending_range(
                self.keys(queue).jobs, CONSUMER_GROUP, min="-", max="+", count=count
            )
        )

    async def drained(self, queue: str) -> bool:
        """Nothing in the jobs stream (undelivered or pending anywhere) or the ordered backlog,
        nothing delayed or held at a rate gate, no parent waiting for its children, no flow
        task left to carry out."""
        k = self.keys(queue)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xlen(k.jobs)
            pipe.zcard(k.delayed)
            pipe.zcard(k.waiting)
            pipe.xlen(k.flow)
            pipe.zcard(k.backlog)
            pipe.zcard(k.gates)
            counts = await pipe.execute()
        return not any(map(int, counts))

    # --- Redis itself ---------------------------------------------------------------------

    async def ping(self) -> None:
        await self.redis.ping()

    async def store_full(self) -> str | None:
        """Why Redis refuses writes for want of memory now, or None. Under `noeviction` a
        Redis past `maxmemory` answers every write with OOM: the gateway answers 503 to
        submits, and `/readyz` says so, so a load balancer or an operator sees it first."""
        info = await self.redis.info("memory")
        if not isinstance(info, dict) or "used_memory" not in info:  # a cluster's per-node reply
            return None
        used, limit = int(info["used_memory"]), int(info.get("maxmemory") or 0)
        if limit and used >= limit and info.get("maxmemory_policy") == "noeviction":
            return f"full: used_memory {used} >= maxmemory {limit} (noeviction)"
        return None
