"""The only code that writes job state. Every method is one script call (or a pipeline of
them), so the hash, the event log and the queue never disagree.

Used by the gateway (submit, cancel, retry), the consumers (start, progress, finish, renew,
reclaim, promote) and `conveyor submit`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import time
from collections.abc import AsyncGenerator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from pydantic_core import PydanticSerializationError, to_json
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from producer.flows import Flows
from producer.fresh import FreshJob
from producer.reads import Reads
from producer.scripts import Call, Scripts
from schemas.errors import ConveyorError, IdempotencyConflict, JobNotFound, TransitionRefused
from schemas.events import StepState
from schemas.keys import (
    CALLBACKS_GROUP,
    CONSUMER_GROUP,
    FAILURE_GROUP,
    FLOW_GROUP,
    QueueKeys,
    limit_key,
)
from schemas.models import Artifact, Job, SubmitRequest
from schemas.priority import DEFAULT_PRIORITY
from schemas.rates import Rate
from schemas.schedules import Schedule, schedule_key
from schemas.settings import Settings
from schemas.status import JobStatus

JSON_SEPARATORS = (",", ":")
# Jobs per call of a batch script (start, succeed): large enough that a call's fixed cost
# vanishes per job, small enough that one call holds Redis for about a millisecond, like
# the pipelines of single calls it replaces did between other clients' commands.
SCRIPT_BATCH = 64
# Jobs per `submit_many` call, by the same measure. Redis instructions per job (callgrind,
# 1,000-job bulks): 308k one job a call, 221k at 25, 219k at 50, 219k at 100, where one
# `submit` call per job cost 293k; 50 jobs hold Redis for about 2 ms.
SUBMIT_BATCH = 50
T = TypeVar("T")


def new_job_id() -> str:
    """32 hex chars, time-ordered (ms first) so ids sort by submission, random after."""
    return new_job_ids(1)[0]


def new_job_ids(n: int) -> list[str]:
    """`n` of `new_job_id`, from one read of the system's randomness rather than `n`."""
    ms, random = f"{time.time_ns() // 1_000_000:012x}", secrets.token_hex(10 * n)
    return [ms + random[i : i + 20] for i in range(0, 20 * n, 20)]


def cache_key(request: SubmitRequest) -> str:
    """What counts as the same work: the request's `cache_key`, else a hash of its type and
    canonical payload (keys sorted, no spaces), so key order in a body does not matter."""
    if request.cache_key:
        return request.cache_key
    canonical = json.dumps(request.payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{request.type}\n{canonical}".encode()).hexdigest()


def _chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# One encoder for every call: `json.dumps` with any non-default option builds a new one each
# time, and a consumer serialises every job's result with it.
_ENCODER = json.JSONEncoder(separators=JSON_SEPARATORS, ensure_ascii=False)


def dumps(value: Any) -> str:
    return _ENCODER.encode(value)


def payload_json(payload: dict[str, Any]) -> bytes | str:
    """A checked payload's JSON, written by pydantic-core's encoder: 0.16 us against 2.1 us
    for `dumps` on a small one, paid by every job submitted (6% of a gateway's CPU per bulk
    job). The two write the same text but for a float's exponent below 1e-4 (`1e-7` against
    `1e-07`, the same number). Whatever pydantic-core refuses (a lone surrogate, which the
    payload check already refuses at the door) is written by `dumps`."""
    try:
        return to_json(payload)
    except PydanticSerializationError:
        return dumps(payload)


@dataclass(frozen=True, slots=True)
class JobRef:
    """Where a job is: its queue (so its keys' slot) and its id."""

    queue: str
    job_id: str


@dataclass(frozen=True, slots=True)
class Submitted:
    job_id: str
    queue: str
    created: bool  # False: an earlier job with the same Idempotency-Key was returned
    cached: bool = False  # an earlier job that did the same work (`cache_ttl_s`) was returned
    # The new job as the script wrote it, for a job created without children (None
    # otherwise: an earlier job, or a flow's root, is read back with `get`).
    fresh: FreshJob | None = None

    @property
    def job(self) -> Job | None:
        return self.fresh.job() if self.fresh is not None else None


@dataclass(frozen=True, slots=True)
class Delivery:
    """A job this consumer must run now, under `attempt` (its fencing token)."""

    queue: str
    job_id: str
    entry_id: str
    attempt: int
    type: str
    payload: dict[str, Any]
    timeout_s: float | None  # None: the handler's declared timeout, else the default
    parent: bool = False  # it has children: its handler gets them as `ctx.children`
    # Its submit's trace context (`schemas.tracing`), when the consumer asked for it
    # (`traced`): '' for a job submitted without one; None when not asked.
    trace: str | None = None


@dataclass(frozen=True, slots=True)
class Lease:
    job_id: str
    entry_id: str
    attempt: int


@dataclass(frozen=True, slots=True)
class LeaseState:
    held: bool
    cancel_requested: bool


@dataclass(frozen=True, slots=True)
class Early:
    """A job a rate gate let go a few ms before its turn: its consumer starts it again
    (`Producer.start`, the same entry) after `wait_ms`."""

    entry_id: str
    job_id: str
    wait_ms: int


@dataclass(frozen=True, slots=True)
class Taken:
    """What one `take` round trip did."""

    written: list[bool]  # per finished job: recorded (False: fenced out, nothing written)
    deliveries: list[Delivery]  # jobs to run now
    exhausted: bool  # fewer new entries than asked for: the queue looked empty
    held: int = 0  # jobs held at a gate (schemas/gates.py): one is let go when it opens
    # (entry id, job id, ms to wait) of jobs let go by a rate gate just before their turn:
    # their entries stay this consumer's, to `start` again once the wait is over
    early: list[Early] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ReclaimReport:
    """What one reclaim pass did: jobs to run now, and entries given up on."""

    deliveries: list[Delivery]
    dead: list[str]
    skipped: int


class Producer(Reads):
    """The job store: its writes here (each one script), its reads in `Reads`."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        super().__init__(redis, settings)
        self.scripts = Scripts(redis)
        self.flows = Flows(self)
        # The four leading arguments of every script (scripts/includes/common.lua).
        self.config = [
            settings.events_maxlen,
            settings.job_events_maxlen,
            settings.job_retention_s,
            settings.idempotency_ttl_s,
        ]

    def _job_keys(self, queue: str, job_id: str) -> tuple[QueueKeys, str, str]:
        k = self.keys(queue)
        return k, k.job(job_id), k.job_events(job_id)

    async def ensure_group(self, queue: str, group: str = CONSUMER_GROUP) -> None:
        """Create a consumer group on the queue's jobs stream (or, for `on_failure`, its
        dead-letter stream; for `flow`, its flow stream) if missing, with the stream. It
        starts from the beginning so entries added before the first consumer existed are
        not skipped."""
        k = self.keys(queue)
        streams = {
            CONSUMER_GROUP: k.jobs,
            FAILURE_GROUP: k.dead,
            FLOW_GROUP: k.flow,
            CALLBACKS_GROUP: k.callbacks,
        }
        stream = streams[group]
        try:
            await self.redis.xgroup_create(stream, group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # --- client side: submit, read, cancel, retry ----------------------------------------

    async def submit(
        self,
        request: SubmitRequest,
        *,
        tenant: str = "",
        idempotency_key: str | None = None,
        count_active: bool = False,
        trace: str = "",
    ) -> Submitted:
        """Create the job (or the flow). `count_active`: count it, and each job of its flow,
        among the tenant's unfinished jobs until it ends (`tenant_active`). `trace`: the
        submit's trace context (`schemas.tracing.pack`), kept with each job of it for its
        attempts' spans."""
        if request.children:
            return await self.flows.submit(request, tenant, idempotency_key, count_active, trace)
        call = self._submit_call(request, tenant, idempotency_key, count=count_active, trace=trace)
        reply = await self.scripts.run("submit", *call)
        if int(reply[0]) < 0:
            raise IdempotencyConflict(idempotency_key or "")
        return self._submitted(request, tenant, reply)

    def _submitted(self, request: SubmitRequest, tenant: str, reply: list[Any]) -> Submitted:
        """What the submit script's reply says: for a job it created, `{1, id, created_at,
        last_event_id}`, the new job as the script wrote it (no read-back)."""
        created, job_id = int(reply[0]), reply[1]
        if created != 1:
            return Submitted(job_id, request.queue, False, cached=created == 2)
        fresh = FreshJob(request, tenant, job_id, int(reply[2]), reply[3])
        return Submitted(job_id, request.queue, True, fresh=fresh)

    async def submit_many(
        self,
        requests: Sequence[SubmitRequest],
        *,
        tenant: str = "",
        count_active: bool = False,
        trace: str = "",
    ) -> list[str]:
        """Submit in a stream of calls on one connection (benchmarks, bulk loads; see
        `submit_answers`); a flow among them in its own calls (one round trip per level).
        Returns the job ids. Every job keeps the same `trace`."""
        submitted = await self.submit_each(
            requests, tenant=tenant, count_active=count_active, trace=trace
        )
        return [s.job_id for s in submitted]

    async def submit_each(
        self,
        requests: Sequence[SubmitRequest],
        *,
        tenant: str = "",
        count_active: bool = False,
        trace: str = "",
    ) -> list[Submitted]:
        """`submit_many`, answering as `submit` does for each job: with its snapshot, for
        each one without children. An error reply is raised once every call has run."""
        stream = self.submit_answers(
            requests, tenant=tenant, count_active=count_active, trace=trace
        )
        async with contextlib.aclosing(stream):
            done = {i: submitted async for i, submitted in stream}
        for submitted in done.values():
            if isinstance(submitted, Exception):
                raise submitted
        return [cast(Submitted, done[i]) for i in range(len(requests))]

    async def submit_answers(
        self,
        requests: Sequence[SubmitRequest],
        *,
        tenant: str = "",
        count_active: bool = False,
        trace: str = "",
    ) -> AsyncGenerator[tuple[int, Submitted | ResponseError], None]:
        """`submit_each`, each request's answer handed back with its index as soon as it is
        known: the caller's work on the first (the gateway renders them) overlaps Redis's
        on the next. A flow is submitted first, in its own calls. The other jobs go
        `SUBMIT_BATCH` at a time into one `submit_many` call per queue (one `submit` each
        for a cache lookup), each queue's in the requests' order on one connection, so each
        queue gets its jobs in that order. A call that Redis refused answers for each of
        its jobs with the error; the calls before and after it ran. (Refused for memory,
        nothing of the call was written: Redis refuses a script before its first write.)"""
        for i, request in enumerate(requests):
            if request.children:
                yield i, await self.flows.submit(request, tenant, None, count_active, trace)
        singles = [(i, r) for i, r in enumerate(requests) if not r.children]
        calls = self._submit_calls(singles, tenant, count_active, trace)
        async with contextlib.aclosing(self.scripts.run_in_order(calls)) as replies:
            async for batch, reply in replies:
                if isinstance(reply, ResponseError):
                    for i, _, _ in batch:
                        yield i, reply
                elif batch[0][1] is None:  # a `submit` call's: its reply names the job
                    yield batch[0][0], self._submitted(batch[0][2], tenant, reply)
                else:
                    created_at = reply[0]
                    for n, (i, job_id, request) in enumerate(batch):
                        created = [1, job_id, created_at, reply[n + 1]]
                        yield i, self._submitted(request, tenant, created)

    def _submit_calls(
        self,
        singles: list[tuple[int, SubmitRequest]],
        tenant: str,
        count_active: bool,
        trace: str,
    ) -> Iterator[tuple[Call, list[tuple[int, str | None, SubmitRequest]]]]:
        """The script calls that submit `singles` (index, request), made one at a time as
        `run_in_order` sends them, each with what it submits: (index, job id, request), the
        id None for a `submit` call (its reply has it). One `submit_many` call is filled
        per queue, so jobs of queues taking turns still share calls; a queue's cache lookup
        goes after the call with its earlier jobs."""
        ids = iter(new_job_ids(len(singles)))
        filling: dict[str, tuple[Call, list[tuple[int, str | None, SubmitRequest]]]] = {}
        for i, request in singles:
            queue = request.queue
            if request.cache_ttl_s:
                if queue in filling:
                    yield filling.pop(queue)
                call = self._submit_call(request, tenant, None, count=count_active, trace=trace)
                yield ("submit", *call), [(i, None, request)]
                continue
            if queue not in filling:
                k = self.keys(queue)
                keys = [k.jobs, k.events, k.delayed, k.tenant_jobs(tenant), k.tenant_active(tenant)]
                args = [*self.config, queue, tenant, k.job_prefix, trace]
                filling[queue] = (("submit_many", keys, [*args, "1" if count_active else "0"]), [])
            (_, _, args), batch = filling[queue]
            job_id = next(ids)
            args.extend(
                (
                    job_id,
                    request.type,
                    payload_json(request.payload),
                    request.max_attempts or "",
                    request.timeout_s or "",
                    int(request.delay_s * 1000),
                    request.priority,
                    request.callback_url or "",
                )
            )
            batch.append((i, job_id, request))
            if len(batch) == SUBMIT_BATCH:
                yield filling.pop(queue)
        yield from filling.values()

    def _submit_call(
        self,
        request: SubmitRequest,
        tenant: str,
        idempotency_key: str | None,
        *,
        job_id: str | None = None,
        parent: JobRef | None = None,
        children: Sequence[JobRef] = (),
        count: bool = False,
        trace: str = "",
    ) -> tuple[list[str], list[Any]]:
        """The submit script's keys and arguments; for a job of a flow, its `parent` and
        its `children` (ids chosen beforehand: the parent lists them when it is created)."""
        job_id = job_id or new_job_id()
        k, job_key, job_events_key = self._job_keys(request.queue, job_id)
        keys = [
            k.jobs,
            k.events,
            job_key,
            job_events_key,
            k.delayed,
            k.idempotency(tenant, idempotency_key or ""),
            k.tenant_jobs(tenant),
        ]
        args = [
            *self.config,
            job_id,
            request.queue,
            request.type,
            tenant,
            payload_json(request.payload),
            # Unset stays unset (''): the worker then applies the handler's declared
            # max_tries and timeout, else the settings' defaults.
            request.max_attempts or "",
            request.timeout_s or "",
            int(request.delay_s * 1000),
            k.job_prefix,
            "1" if idempotency_key else "0",
        ]
        prioritised = request.priority != DEFAULT_PRIORITY
        if not (parent or children or request.callback_url or request.cache_ttl_s or count):
            if trace or prioritised:  # and one with a trace context or a priority, these
                args.append(trace)
                if prioritised:
                    args.append(request.priority)
            return keys, args  # a plain job: no more to parse and copy into the AOF
        keys += (
            k.job_children(job_id),
            k.waiting,
            k.cache(tenant, cache_key(request)) if request.cache_ttl_s else k.cache(tenant, ""),
            k.tenant_active(tenant),
        )
        args += (
            parent.job_id if parent else "",
            parent.queue if parent else "",
            request.on_child_failure,
            int((time.time() + self.settings.flow_check_s) * 1000),
            request.callback_url or "",
            "1" if request.cache_ttl_s else "0",
            request.cache_ttl_s or "",
            "1" if count else "0",
            trace,
            request.priority,
        )
        for child in children:
            args += (child.job_id, child.queue)
        return keys, args

    async def cancel(self, queue: str, job_id: str, reason: str = "cancelled by request") -> str:
        """`cancelled` (it ended now) or `requested` (it is running; its worker will stop it).
        A parent's unfinished descendants are cancelled with it; a child's parent hears of
        its end at once. Idempotent: a job cancelled before answers `cancelled` again,
        changing nothing, as a running job asked twice answers `requested` twice."""
        try:
            outcome = await self.cancel_one(queue, job_id, reason)
        except TransitionRefused as refused:
            if refused.status != JobStatus.CANCELLED:
                raise
            return JobStatus.CANCELLED
        if outcome == "cascade":
            await self.flows.cancel_children(queue, job_id, reason)
            outcome = JobStatus.CANCELLED
        if outcome == JobStatus.CANCELLED:
            await self.flows.tell_parent_of(queue, job_id)
        return outcome

    async def cancel_one(self, queue: str, job_id: str, reason: str) -> str:
        """The cancel script alone: `cancelled`, `requested`, or `cascade` (a waiting parent
        was cancelled: its children are to be cancelled next)."""
        k, job_key, job_events_key = self._job_keys(queue, job_id)
        outcome = await self.scripts.run(
            "cancel",
            keys=[k.jobs, k.events, job_key, job_events_key, k.delayed, k.flow, k.waiting],
            args=[*self.config, reason],
        )
        result = self._outcome(job_id, "cancel", outcome)
        return "cascade" if result == JobStatus.CANCELLED and outcome[1] else result

    async def retry(self, queue: str, job_id: str, *, from_start: bool = False) -> str:
        """Re-run an ended job. It resumes after its last recorded step; `from_start`
        forgets the steps and runs everything again."""
        k, job_key, job_events_key = self._job_keys(queue, job_id)
        outcome = await self.scripts.run(
            "retry",
            keys=[
                k.jobs,
                k.events,
                job_key,
                job_events_key,
                k.job_steps(job_id),
                k.job_children(job_id),
            ],
            args=[*self.config, "1" if from_start else "0"],
        )
        return self._outcome(job_id, "retry", outcome)

    @staticmethod
    def _outcome(job_id: str, action: str, outcome: list[Any]) -> str:
        result = str(outcome[0])
        if result == "missing":
            raise JobNotFound(job_id)
        if result == "refused":
            raise TransitionRefused(job_id, outcome[1], action)
        return result

    # --- worker side: start, report, finish -----------------------------------------------

    async def start(
        self,
        queue: str,
        entries: Sequence[tuple[str, str]],
        consumer: str,
        *,
        traced: bool = False,
        gates: str = "",
        early: list[Early] | None = None,
    ) -> list[Delivery]:
        """Start the jobs of freshly read entries `(entry_id, job_id)`, in one round trip.
        Entries whose job ended or moved on are acknowledged and left out, as are jobs held
        at one of the consumer's `gates` (schemas.gates.gates_argument). `traced`: each
        delivery carries its job's trace context (a consumer that makes spans asks). Jobs
        a rate gate let go just before their turn are added to `early`, when given."""
        if not entries:
            return []
        k = self.keys(queue)
        calls = []
        for chunk in _chunks(entries, SCRIPT_BATCH):
            keys = [k.jobs, k.events]
            for _, job_id in chunk:
                keys += (k.job(job_id), k.job_events(job_id))
            flag = "1" if traced else ""
            calls.append(
                (keys, [*self.config, consumer, flag, gates, *(entry for entry, _ in chunk)])
            )
        results = await self._run_batches("start", calls)
        if early is not None:
            early += (
                Early(entry_id, job_id, int(result[2]))
                for (entry_id, job_id), result in zip(entries, results, strict=True)
                if result[0] == "skipped" and result[1] == "early"
            )
        return [
            self._delivery(queue, job_id, entry_id, result[1:])
            for (entry_id, job_id), result in zip(entries, results, strict=True)
            if result[0] == "started"
        ]

    async def _run_batches(self, name: str, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """Run a batch script once per chunk and join the per-job replies: one round trip."""
        replies = await self.scripts.run_many([(name, keys, args) for keys, args in calls])
        return [result for reply in replies for result in reply]

    @staticmethod
    def _delivery(queue: str, job_id: str, entry_id: str, row: list[Any]) -> Delivery:
        attempt, job_type, payload, timeout_s, children, *traced = row
        return Delivery(
            queue=queue,
            job_id=job_id,
            entry_id=entry_id,
            attempt=int(attempt),
            type=job_type,
            payload=json.loads(payload),
            timeout_s=float(timeout_s) if timeout_s else None,
            parent=bool(children),
            trace=(traced[0] or "") if traced else None,
        )

    async def progress(
        self,
        queue: str,
        job_id: str,
        attempt: int,
        percent: float | None = None,
        stage: str | None = None,
        message: str | None = None,
    ) -> bool:
        k, job_key, job_events_key = self._job_keys(queue, job_id)
        written = await self.scripts.run(
            "progress",
            keys=[k.events, job_key, job_events_key],
            args=[
                *self.config,
                attempt,
                "" if percent is None else f"{max(0.0, min(100.0, percent)):g}",
                stage or "",
                message or "",
            ],
        )
        return bool(written)

    async def start_step(
        self, delivery: Delivery, name: str, max_steps: int
    ) -> tuple[str, dict[str, Any] | None]:
        """A step of the job starts: `(StepState.STARTED, None)`; or it already succeeded in
        an earlier attempt: `(StepState.RESTORED, its record)`, its result under `result`.
        `('too_many', None)` past `max_steps`; `('fenced', None)`: the attempt lost the job."""
        k, job_key, job_events_key = self._job_keys(delivery.queue, delivery.job_id)
        reply = await self.scripts.run(
            "step",
            keys=[k.events, job_key, job_events_key, k.job_steps(delivery.job_id)],
            args=[*self.config, delivery.attempt, name, StepState.STARTED, max_steps],
        )
        return str(reply[0]), (json.loads(reply[1]) if len(reply) > 1 else None)

    async def end_step(
        self,
        delivery: Delivery,
        name: str,
        duration_ms: int,
        *,
        result: Any = None,
        error: str | None = None,
    ) -> bool:
        """Record how a step ended: its result (JSON, or an `Artifact`), or its error when
        `error` is given. False: the attempt lost the job and nothing was written."""
        k, job_key, job_events_key = self._job_keys(delivery.queue, delivery.job_id)
        if error is not None:
            tail: list[Any] = [StepState.FAILED, error, duration_ms, ""]
        elif isinstance(result, Artifact):
            tail = [StepState.SUCCEEDED, dumps(result.model_dump()), duration_ms, "artifact"]
        else:
            tail = [StepState.SUCCEEDED, dumps(result), duration_ms, "json"]
        reply = await self.scripts.run(
            "step",
            keys=[k.events, job_key, job_events_key, k.job_steps(delivery.job_id)],
            args=[*self.config, delivery.attempt, name, *tail],
        )
        return str(reply[0]) == "recorded"

    async def succeed(
        self, delivery: Delivery, result: Any, artifacts: Sequence[Artifact] = ()
    ) -> bool:
        """Record success. False: the attempt was fenced out (another consumer owns the job)."""
        (written,) = await self.succeed_many([(delivery, result, artifacts)])
        return written

    async def succeed_many(
        self, outcomes: Sequence[tuple[Delivery, Any, Sequence[Artifact]]]
    ) -> list[bool]:
        """`succeed` for many jobs in one round trip (a worker's completions, batched)."""
        written: dict[int, bool] = {}
        by_queue: dict[str, list[int]] = {}
        for i, (delivery, _, _) in enumerate(outcomes):
            by_queue.setdefault(delivery.queue, []).append(i)
        for queue, indexes in by_queue.items():
            calls = self._succeed_calls(queue, [outcomes[i] for i in indexes])
            replies = await self._run_batches("succeed", calls)
            written.update(zip(indexes, map(bool, replies), strict=True))
        return [written[i] for i in range(len(outcomes))]

    def _succeed_calls(
        self, queue: str, outcomes: Sequence[tuple[Delivery, Any, Sequence[Artifact]]]
    ) -> list[tuple[list[str], list[Any]]]:
        k = self.keys(queue)
        calls = []
        for chunk in _chunks(outcomes, SCRIPT_BATCH):
            keys = [k.jobs, k.events]
            args: list[Any] = [*self.config]
            for delivery, result, artifacts in chunk:
                result_json = dumps(result)
                artifacts_json = dumps([a.model_dump() for a in artifacts]) if artifacts else "[]"
                keys += (k.job(delivery.job_id), k.job_events(delivery.job_id))
                args += (
                    delivery.entry_id,
                    delivery.attempt,
                    result_json,
                    artifacts_json,
                    # The event's data, from the JSON already made: a result is serialised
                    # once, however large.
                    f'{{"result":{result_json},"artifacts":{artifacts_json}}}',
                )
            calls.append((keys, args))
        return calls

    async def take(
        self,
        queue: str,
        consumer: str,
        count: int,
        finished: Sequence[tuple[Delivery, Any, Sequence[Artifact]]] = (),
        *,
        traced: bool = False,
        gates: str = "",
    ) -> Taken:
        """A busy consumer's round trip: record the jobs of `queue` it `finished` (as
        `succeed_many`), then read and start up to `count` new ones (the `take` script;
        `traced` and `gates` as for `start`).
        """
        k = self.keys(queue)
        calls = [("succeed", keys, args) for keys, args in self._succeed_calls(queue, finished)]
        if count > 0:
            args = [*self.config, consumer, count, k.job_prefix, "1" if traced else "", gates]
            calls.append(("take", [k.jobs, k.events, k.paused], args))
        replies = await self.scripts.run_many(calls) if calls else []
        written = [bool(w) for reply in replies[: len(calls) - (count > 0)] for w in reply]
        taken = replies[-1] if count > 0 else []
        deliveries = [
            self._delivery(queue, row[1], row[0], row[3:]) for row in taken if row[2] == "started"
        ]
        # 'moving': there is more to take than it took (see take.lua).
        moving = bool(taken) and taken[-1][2] == "moving"
        exhausted = count > 0 and len(taken) < count and not moving
        skipped = [row for row in taken if row[2] == "skipped"]
        held = sum(1 for row in skipped if row[3] == "held")
        early = [Early(row[0], row[1], int(row[4])) for row in skipped if row[3] == "early"]
        return Taken(written, deliveries, exhausted=exhausted, held=held, early=early)

    async def fail(
        self,
        delivery: Delivery,
        error: str,
        *,
        retryable: bool,
        backoff_ms: int,
        default_max_attempts: int,
    ) -> str:
        """`retrying`, `failed` (dead-lettered), or `fenced` (nothing written).
        `default_max_attempts` applies when the job was submitted without `max_attempts`."""
        k, job_key, job_events_key = self._job_keys(delivery.queue, delivery.job_id)
        outcome = await self.scripts.run(
            "fail",
            keys=[k.jobs, k.events, job_key, job_events_key, k.delayed, k.dead],
            args=[
                *self.config,
                delivery.entry_id,
                delivery.attempt,
                error,
                "1" if retryable else "0",
                backoff_ms,
                default_max_attempts,
            ],
        )
        return str(outcome[0])

    async def cancelled(self, delivery: Delivery, reason: str) -> bool:
        k, job_key, job_events_key = self._job_keys(delivery.queue, delivery.job_id)
        written = await self.scripts.run(
            "cancelled",
            keys=[k.jobs, k.events, job_key, job_events_key],
            args=[*self.config, delivery.entry_id, delivery.attempt, reason],
        )
        return bool(written)

    async def renew(self, queue: str, consumer: str, leases: Sequence[Lease]) -> list[LeaseState]:
        """Extend the leases of this consumer's running jobs, in one round trip."""
        if not leases:
            return []
        k = self.keys(queue)
        calls: list[Call] = [
            (
                "renew",
                [k.jobs, k.job(lease.job_id)],
                [*self.config, lease.entry_id, consumer, lease.attempt],
            )
            for lease in leases
        ]
        results = await self.scripts.run_many(calls)
        return [LeaseState(bool(held), bool(cancel)) for held, cancel in results]

    async def cancel_requested(self, queue: str, job_ids: Sequence[str]) -> set[str]:
        """Which of these jobs a user asked to cancel (polled by workers: cheap, one trip)."""
        if not job_ids:
            return set()
        k = self.keys(queue)
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(k.job(job_id), "cancel_requested")
            flags = await pipe.execute()
        return {job_id for job_id, flag in zip(job_ids, flags, strict=True) if flag == "1"}

    async def promote(self, queue: str, limit: int = 1000) -> tuple[int, int | None]:
        """Move due delayed jobs to where queued jobs wait, and let rate gates' next held jobs
        go. Returns (moved, the next due time in ms or None)."""
        k = self.keys(queue)
        moved, next_due = await self.scripts.run(
            "promote",
            keys=[k.delayed, k.jobs, k.events, k.gates],
            args=[*self.config, limit, k.job_prefix],
        )
        return int(moved), (None if int(next_due) < 0 else int(next_due))

    async def reclaim(
        self,
        queue: str,
        consumer: str,
        *,
        min_idle_ms: int,
        max_deliveries: int,
        count: int,
        traced: bool = False,
        gates: str = "",
    ) -> ReclaimReport:
        """Take over entries idle longer than `min_idle_ms` (their consumer stopped renewing).
        XPENDING finds them; the reclaim script claims each atomically (XCLAIM's idle guard
        makes concurrent reclaimers safe) and decides: run again, give up, or skip (a job
        read but never started, of one of the consumer's `gates`' types, waits again).
        `traced` as for `start`."""
        k = self.keys(queue)
        pending = await self.redis.xpending_range(
            k.jobs, CONSUMER_GROUP, min="-", max="+", count=count, idle=min_idle_ms
        )
        if not pending:
            return ReclaimReport([], [], 0)
        entry_ids = [p["message_id"] for p in pending]
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id in entry_ids:
                pipe.xrange(k.jobs, entry_id, entry_id)
            ranges = await pipe.execute()
        job_ids = {
            entry_id: rows[0][1]["job_id"]
            for entry_id, rows in zip(entry_ids, ranges, strict=True)
            if rows
        }
        gone = [entry_id for entry_id in entry_ids if entry_id not in job_ids]
        if gone:  # deleted while pending (an ack raced us, or a cancel): drop from the PEL
            await self.redis.xack(k.jobs, CONSUMER_GROUP, *gone)
        claimable = [(entry_id, job_ids[entry_id]) for entry_id in entry_ids if entry_id in job_ids]
        calls: list[Call] = [
            (
                "reclaim",
                [k.jobs, k.events, k.job(job_id), k.job_events(job_id), k.dead],
                [
                    *self.config,
                    entry_id,
                    consumer,
                    min_idle_ms,
                    max_deliveries,
                    "1" if traced else "",
                    gates,
                ],
            )
            for entry_id, job_id in claimable
        ]
        results = await self.scripts.run_many(calls) if calls else []
        deliveries: list[Delivery] = []
        dead: list[str] = []
        skipped = len(gone)
        for (entry_id, job_id), result in zip(claimable, results, strict=True):
            verdict = result[0]
            if verdict == JobStatus.RUNNING:
                deliveries.append(self._delivery(queue, job_id, entry_id, result[1:]))
            elif verdict == "dead":
                dead.append(job_id)
            else:
                skipped += 1
        return ReclaimReport(deliveries, dead, skipped)

    # --- shared rate limits -----------------------------------------------------------------

    async def reserve(self, name: str, rate: Rate) -> tuple[float, float]:
        """The next start under the shared limit `name` (`ctx.limit`): (seconds to wait for
        it, its time on Redis's clock in ms). Every worker of every queue shares the limit."""
        slot, now = await self.scripts.run(
            "limit",
            keys=[limit_key(name, self.settings.key_prefix)],
            args=[*self.config, rate.interval_ms],
        )
        return max(0.0, (float(slot) - float(now)) / 1000), float(slot)

    # --- queues -----------------------------------------------------------------------------

    async def pause(self, queue: str) -> None:
        """Start nothing more from `queue` (submits are still taken; running jobs finish)."""
        await self.redis.set(self.keys(queue).paused, "1")

    async def resume(self, queue: str) -> None:
        await self.redis.delete(self.keys(queue).paused)

    async def retry_dead(self, queue: str, limit: int = 1000) -> tuple[int, int]:
        """Re-queue the queue's dead-lettered jobs (each `failed -> queued`, as `POST
        /retry`), removing their dead-letter entries. Returns (re-queued, skipped: no longer
        failed, or expired)."""
        k = self.keys(queue)
        rows = await self.redis.xrange(k.dead, "-", "+", count=limit)
        retried = skipped = 0
        for entry_id, fields in rows:
            try:
                await self.retry(queue, fields.get("job_id", ""))
                retried += 1
            except ConveyorError:
                skipped += 1
            await self.redis.xdel(k.dead, entry_id)
        return retried, skipped

    # --- schedules ------------------------------------------------------------------------

    async def put_schedule(self, schedule: Schedule) -> bool:
        """Create or replace a schedule (kept in its queue). True when it is new. A replaced
        one keeps its creation time and its ticks."""
        k = self.keys(schedule.queue)
        existing = await self.redis.hget(k.schedules, schedule.key)  # type: ignore[misc]
        if existing:
            schedule = schedule.model_copy(
                update={"created_at": json.loads(existing).get("created_at", 0)}
            )
        stored = schedule.model_dump_json(exclude={"last_run_at", "next_run_at"})
        await self.redis.hset(k.schedules, schedule.key, stored)  # type: ignore[misc]
        return existing is None

    async def delete_schedule(self, queue: str, tenant: str, name: str) -> bool:
        k = self.keys(queue)
        key = schedule_key(tenant, name)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hdel(k.schedules, key)
            pipe.hdel(k.schedule_ticks, key)
            removed, _ = await pipe.execute()
        return bool(removed)

    async def schedule_ticked(self, schedule: Schedule, tick_ms: int | None, next_ms: int) -> bool:
        """Record that the schedule's job for `tick_ms` was submitted (None: no new tick),
        and when the next tick is due. False: a later tick is already recorded."""
        recorded = await self.scripts.run(
            "schedule_tick",
            keys=[self.keys(schedule.queue).schedule_ticks],
            args=[*self.config, schedule.key, "" if tick_ms is None else tick_ms, next_ms],
        )
        return bool(recorded)

    # --- consumer upkeep: the roster and the on_failure group ----------------------------

    async def record_health(self, key: str, ttl_s: float, info: str) -> None:
        """arq's health-check record of one consumer (`arq --check` reads it): `info`, for
        `ttl_s`. The worker writes it from its loop, its keeper when the loop is stalled."""
        await self.redis.psetex(key, int(ttl_s * 1000), info)

    async def ack_flow_tasks(self, queue: str, entry_ids: Sequence[str]) -> None:
        """Flow tasks carried out: acknowledged and deleted, so the stream holds only what is
        still to do."""
        await self._ack_and_delete(self.keys(queue).flow, FLOW_GROUP, entry_ids)

    async def ack_callbacks(self, queue: str, entry_ids: Sequence[str]) -> None:
        """Callback deliveries done (or rescheduled into the due set)."""
        await self._ack_and_delete(self.keys(queue).callbacks, CALLBACKS_GROUP, entry_ids)

    async def _ack_and_delete(self, stream: str, group: str, entry_ids: Sequence[str]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xack(stream, group, *entry_ids)
            pipe.xdel(stream, *entry_ids)
            await pipe.execute()

    async def record_callback(
        self,
        queue: str,
        job_id: str,
        status: str,
        attempts: int,
        error: str = "",
        retry_at_ms: int | None = None,
    ) -> bool:
        """How a callback delivery went (`delivered`, `pending` with its next try at
        `retry_at_ms`, `failed`). False: the job expired meanwhile."""
        k = self.keys(queue)
        written = await self.scripts.run(
            "callback",
            keys=[k.job(job_id), k.callbacks_due],
            args=[*self.config, job_id, status, attempts, error, retry_at_ms or ""],
        )
        return bool(written)

    async def callbacks_due(self, queue: str, limit: int = 100) -> int | None:
        """Put callbacks whose next try is due back in the stream; when the next one is due
        (ms), or None."""
        k = self.keys(queue)
        _, next_due = await self.scripts.run(
            "callbacks_due", keys=[k.callbacks_due, k.callbacks], args=[*self.config, limit]
        )
        return None if int(next_due) < 0 else int(next_due)

    async def ack_dead_letter(self, queue: str, entry_id: str) -> None:
        await self.redis.xack(self.keys(queue).dead, FAILURE_GROUP, entry_id)

    async def mark_seen(self, queue: str, consumer: str) -> None:
        """The consumer's heartbeat, for `conveyor inspect` and the roster's cleanup."""
        now_ms = str(int(time.time() * 1000))
        await self.redis.hset(self.keys(queue).consumer_seen(), consumer, now_ms)  # type: ignore[misc]

    async def forget_gone_consumers(self, queue: str, me: str, idle_cleanup_s: float) -> list[str]:
        """Remove the queue's consumers (of both groups) not seen for `idle_cleanup_s` that
        hold nothing; returns "group/name" of each removed. Redis never forgets a consumer by
        itself, so without this `XINFO CONSUMERS` lists every process that ever ran. A live
        one cannot be removed by mistake (its heartbeat marks it seen), and would be made
        again by its next XREADGROUP."""
        k = self.keys(queue)
        seen = await self.redis.hgetall(k.consumer_seen())  # type: ignore[misc]
        cutoff_ms = (time.time() - idle_cleanup_s) * 1000
        removed = []
        for stream, group in (
            (k.jobs, CONSUMER_GROUP),
            (k.dead, FAILURE_GROUP),
            (k.flow, FLOW_GROUP),
            (k.callbacks, CALLBACKS_GROUP),
        ):
            try:
                consumers = await self.redis.xinfo_consumers(stream, group)
            except ResponseError:  # no such group (yet)
                continue
            for consumer in consumers:
                name = consumer["name"]
                if name == me or consumer["pending"] or int(seen.get(name, 0)) >= cutoff_ms:
                    continue
                # Not a MULTI: redis-py refuses transactions on a cluster. In this order, a
                # pass cut in between leaves a consumer never seen, which the next removes.
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.hdel(k.consumer_seen(), name)
                    pipe.xgroup_delconsumer(stream, group, name)
                    await pipe.execute()
                removed.append(f"{group}/{name}")
        return removed
