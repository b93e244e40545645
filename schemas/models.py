"""Pydantic models shared by the gateway, the producer and the consumers."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.events import EventType, StepState
from schemas.priority import DEFAULT_PRIORITY, MAX_PRIORITY, MIN_PRIORITY
from schemas.status import JobStatus
from schemas.strict_json import MAX_JSON_DEPTH, check_json

QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
JOB_TYPE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
MAX_CHILDREN = 1000  # per parent, in one submit
MAX_FLOW_DEPTH = 4  # levels of children below the job submitted
MAX_FLOW_JOBS = 10_000  # jobs in one submitted flow, all levels
# What `producer.new_job_id` makes. A path's job id is checked against it before it is spelled
# into a key: `<id>:events` once named the job's events stream and answered WRONGTYPE (500).
JOB_ID = re.compile(r"^[0-9a-f]{32}$")


class SubmitRequest(BaseModel):
    """The body of `POST /v1/jobs` and the arguments of `producer.submit`."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(pattern=JOB_TYPE_NAME.pattern, description="a registered job type")
    payload: dict[str, Any] = Field(
        default_factory=dict,
        description=f"a JSON object: finite numbers, UTF-8 text, {MAX_JSON_DEPTH} levels at most",
    )
    queue: str = Field(default="default", pattern=QUEUE_NAME.pattern)
    delay_s: float = Field(default=0, ge=0, le=365 * 24 * 3600)
    max_attempts: int | None = Field(default=None, ge=1, le=100)
    timeout_s: float | None = Field(default=None, gt=0, le=7 * 24 * 3600)
    priority: int = Field(
        default=DEFAULT_PRIORITY,
        ge=MIN_PRIORITY,
        le=MAX_PRIORITY,
        description="0-9, higher first: within a queue no job starts while one of a higher "
        "priority waits; within a level, first in first out, tenants taking turns",
    )
    children: list[SubmitRequest] = Field(
        default_factory=list,
        max_length=MAX_CHILDREN,
        description=(
            "jobs that run first: this one waits (`waiting`) until every child has ended. "
            f"Each is a submit body (its own `children` allowed), {MAX_CHILDREN} per parent, "
            f"{MAX_FLOW_DEPTH} levels; a child without `queue` goes to its parent's"
        ),
    )
    callback_url: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^https?://",
        description="when the job ends, its snapshot is POSTed here, signed per the Standard "
        "Webhooks spec with the tenant's secret, retried with backoff",
    )
    cache_ttl_s: int | None = Field(
        default=None,
        ge=1,
        le=30 * 24 * 3600,
        description="when the same tenant's same work (`cache_key`) succeeded within this "
        "many seconds, answer 200 with that job (`Conveyor-Cache: hit`) and run nothing",
    )
    cache_key: str | None = Field(
        default=None,
        pattern=r"^[\x21-\x7e]{1,255}$",
        description="what counts as the same work (default: a hash of the type and the "
        "canonical payload)",
    )
    on_child_failure: Literal["fail", "continue"] = Field(
        default="fail",
        description="a child failed or was cancelled: `fail` this job at once (and cancel "
        "its other unfinished children), or `continue` and run it with the failure visible",
    )

    @field_validator("payload")
    @classmethod
    def _strict_json(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_json(value, "payload")
        return value

    @model_validator(mode="after")
    def _a_flow_fits(self) -> SubmitRequest:
        if self.cache_key is not None and self.cache_ttl_s is None:
            raise ValueError("cache_key: set cache_ttl_s too, for how long a result is reused")
        if self.children and self.delay_s:
            raise ValueError("delay_s: a job with children starts when they end, not later")
        if any(child.cache_ttl_s for child in self.children):
            raise ValueError("children: a child is not served from cache (its parent may be)")
        if self.children and self.flow_depth() > MAX_FLOW_DEPTH:
            raise ValueError(f"children: at most {MAX_FLOW_DEPTH} levels of children")
        if self.children and self.flow_size() > MAX_FLOW_JOBS:
            raise ValueError(f"children: at most {MAX_FLOW_JOBS} jobs in one flow")
        return self

    def with_queues(self, default: str) -> SubmitRequest:
        """This request with every queue of its flow spelled out: its own `default` unless
        it named one, a child's its parent's unless it named one."""
        queue = self.queue if "queue" in self.model_fields_set else default
        if not self.children:  # the common case, on every submit: no copy when none is due
            return self if queue == self.queue else self.model_copy(update={"queue": queue})
        children = [child.with_queues(queue) for child in self.children]
        return self.model_copy(update={"queue": queue, "children": children})

    def flow(self) -> list[SubmitRequest]:
        """Every job of this request's flow, itself first, parents before their children."""
        return [self, *(job for child in self.children for job in child.flow())]

    def flow_depth(self) -> int:
        """Levels of children below this job (0: none)."""
        return 1 + max(c.flow_depth() for c in self.children) if self.children else 0

    def flow_size(self) -> int:
        """Jobs in this job's flow, itself included."""
        return 1 + sum(c.flow_size() for c in self.children)


class Artifact(BaseModel):
    """An object a job wrote to S3."""

    name: str
    bucket: str
    key: str
    size: int
    sha256: str
    etag: str
    content_type: str


class StepRecord(BaseModel):
    """One step of a multi-step job, as its snapshot lists them (first-start order)."""

    name: str
    state: StepState
    attempt: int
    started_at: int | None = None
    finished_at: int | None = None
    duration_ms: int | None = None
    error: str | None = None

    @classmethod
    def from_records(cls, records: Mapping[str, str]) -> list[StepRecord]:
        """The steps hash (name -> JSON record) in first-start order; results left out."""
        parsed = [json.loads(raw) for raw in records.values()]
        parsed.sort(key=lambda record: record.get("seq", 0))
        return [cls.model_validate(record) for record in parsed]


class CallbackState(BaseModel):
    """Where a job's `callback_url` delivery stands: `pending` (not yet, or being retried),
    `delivered` (a 2xx), `failed` (retries given up)."""

    url: str
    status: Literal["waiting", "pending", "delivered", "failed"]
    attempts: int = 0
    last_error: str | None = None


class ChildCounts(BaseModel):
    """A parent's children by how they stand: `pending` have not ended yet."""

    total: int
    pending: int
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0


def _json_or(value: str | None, default: Any) -> Any:
    return json.loads(value) if value else default


class Job(BaseModel):
    """A job's snapshot, as held in its Redis hash."""

    id: str
    queue: str
    type: str
    status: JobStatus
    tenant: str = ""
    stage: str | None = None
    progress: float = 0
    message: str | None = None
    attempt: int = 0
    priority: int = DEFAULT_PRIORITY
    max_attempts: int | None = None  # None: the handler's declared max_tries, else the default
    timeout_s: float | None = None  # None: the handler's declared timeout, else the default
    owner: str | None = None
    payload: dict[str, Any] = Field(default_factory=dict)
    result: Any = None
    error: str | None = None
    artifacts: list[Artifact] = Field(default_factory=list)
    cancel_requested: bool = False
    created_at: int = 0
    updated_at: int = 0
    started_at: int | None = None
    finished_at: int | None = None
    due_at: int | None = None
    last_event_id: str | None = None
    steps: list[StepRecord] = Field(default_factory=list)
    parent_id: str | None = None
    children: ChildCounts | None = None
    on_child_failure: str | None = None
    callback: CallbackState | None = None

    @field_validator(
        "stage", "message", "owner", "error", "last_event_id", "parent_id", mode="before"
    )
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return value or None

    @classmethod
    def from_hash(cls, fields: dict[str, str], steps: Mapping[str, str] | None = None) -> Job:
        """Build from `HGETALL` (decoded) and, for a job with steps, its steps hash. Empty
        strings mean 'not set'."""

        def opt_int(name: str) -> int | None:
            raw = fields.get(name)
            return int(raw) if raw else None

        return cls(
            id=fields["id"],
            queue=fields["queue"],
            type=fields["type"],
            status=JobStatus(fields["status"]),
            tenant=fields.get("tenant", ""),
            stage=fields.get("stage"),
            progress=float(fields.get("progress") or 0),
            message=fields.get("message"),
            attempt=int(fields.get("attempt") or 0),
            # Stored only when not the default: a plain job's hash stays as small as before.
            priority=int(fields.get("priority") or DEFAULT_PRIORITY),
            max_attempts=int(fields["max_attempts"]) if fields.get("max_attempts") else None,
            timeout_s=float(fields["timeout_s"]) if fields.get("timeout_s") else None,
            owner=fields.get("owner"),
            payload=_json_or(fields.get("payload"), {}),
            result=_json_or(fields.get("result"), None),
            error=fields.get("error"),
            artifacts=_json_or(fields.get("artifacts"), []),
            cancel_requested=fields.get("cancel_requested") == "1",
            created_at=int(fields.get("created_at") or 0),
            updated_at=int(fields.get("updated_at") or 0),
            started_at=opt_int("started_at"),
            finished_at=opt_int("finished_at"),
            due_at=opt_int("due_at"),
            last_event_id=fields.get("last_event_id"),
            steps=StepRecord.from_records(steps) if steps else [],
            parent_id=fields.get("parent_id"),
            children=_child_counts(fields),
            on_child_failure=fields.get("on_child_failure") or None,
            callback=_callback(fields),
        )


def _callback(fields: Mapping[str, str]) -> CallbackState | None:
    if not fields.get("callback_url"):
        return None
    return CallbackState(
        url=fields["callback_url"],
        status=fields.get("callback_status") or "waiting",  # type: ignore[arg-type]
        attempts=int(fields.get("callback_attempts") or 0),
        last_error=fields.get("callback_error") or None,
    )


def _child_counts(fields: Mapping[str, str]) -> ChildCounts | None:
    if not fields.get("children"):
        return None
    return ChildCounts(
        total=int(fields["children"]),
        pending=int(fields.get("children_pending") or 0),
        succeeded=int(fields.get("children_succeeded") or 0),
        failed=int(fields.get("children_failed") or 0),
        cancelled=int(fields.get("children_cancelled") or 0),
    )


@dataclass(frozen=True)
class JobIdentity:
    """Who a job is: what an entry of the job's own events stream leaves out (see
    `append_event` in the scripts) and `Event.from_entry` puts back."""

    job_id: str
    queue: str
    job_type: str
    tenant: str = ""

    def fields(self) -> dict[str, str]:
        return {
            "job_id": self.job_id,
            "queue": self.queue,
            "job_type": self.job_type,
            "tenant": self.tenant,
        }


class Event(BaseModel):
    """One entry of an events stream. `id` is the stream entry id, the same in the
    queue's stream and the job's own, so it is a valid SSE `Last-Event-ID` for both."""

    id: str
    event: EventType
    job_id: str
    queue: str
    job_type: str
    tenant: str = ""
    status: JobStatus
    attempt: int = 0
    ts: int
    data: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_entry(
        cls, entry_id: str, fields: Mapping[str, str], job: JobIdentity | None = None
    ) -> Event:
        """An entry of the queue's stream, which names its job; or, given `job`, of that
        job's own stream, whose entries leave the job's identity to their key."""
        if job is not None:
            fields = {**job.fields(), **fields}
        return cls(
            id=entry_id,
            event=EventType(fields["event"]),
            job_id=fields["job_id"],
            queue=fields["queue"],
            job_type=fields["job_type"],
            tenant=fields.get("tenant", ""),
            status=JobStatus(fields["status"]),
            attempt=int(fields.get("attempt") or 0),
            ts=int(fields["ts"]),
            data=_json_or(fields.get("data"), {}),
        )
