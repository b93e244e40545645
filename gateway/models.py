"""Response bodies of the API (requests are `schemas.SubmitRequest`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schemas.models import Artifact, Job
from schemas.schedules import Schedule


class Links(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    self_: str = Field(alias="self", description="the job's snapshot")
    events: str = Field(description="SSE stream of the job; carries a token for EventSource")


class ArtifactResource(Artifact):
    url: str = Field(description="the API path that redirects to a short-lived S3 URL")


class JobResource(Job):
    """A job's snapshot with its links."""

    artifacts: list[ArtifactResource] = Field(default_factory=list)  # type: ignore[assignment]
    links: Links


class PageLinks(BaseModel):
    events: str = Field(description="SSE firehose of the caller's jobs, with a token")


class JobPage(BaseModel):
    items: list[JobResource]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null: done")
    links: PageLinks


class ActionResult(BaseModel):
    outcome: str = Field(description="cancel: `cancelled` or `requested`; retry: `queued`")
    job: JobResource


class ErrorBody(BaseModel):
    error: str
    message: str


BULK_MAX_JOBS = 1000


class BulkSubmit(BaseModel):
    """`POST /v1/jobs/bulk`: each item is a `POST /v1/jobs` body, checked on its own."""

    jobs: list[Any] = Field(min_length=1, max_length=BULK_MAX_JOBS)


class BulkItem(BaseModel):
    status: int = Field(description="what `POST /v1/jobs` would have answered for this item")
    job: JobResource | None = None
    error: dict[str, Any] | None = Field(default=None, description="an error body, as ErrorBody")


class BulkResult(BaseModel):
    results: list[BulkItem] = Field(description="one per submitted item, in order")


class JobTypeInfo(BaseModel):
    """A job type `POST /v1/jobs` accepts, and what its payload must be."""

    name: str
    payload_schema: dict[str, Any] = Field(description="the JSON Schema a payload must fit")
    timeout_s: float = Field(description="its handler's timeout, unless a submit sets one")
    max_tries: int = Field(description="attempts it gets, unless a submit sets `max_attempts`")
    flow_control: dict[str, Any] = Field(
        default_factory=dict,
        description="its handler's `rate_limit` and `rate_key`, `max_running` and "
        "`concurrency_key`, where declared: shared by every worker of the queue",
    )


# The error answers most routes share, for the OpenAPI description (errors.py makes them).
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or unknown API key"},
    404: {"model": ErrorBody, "description": "no such job (or another tenant's)"},
    503: {"model": ErrorBody, "description": "Redis did not answer in time, or is full"},
}


class ScheduleList(BaseModel):
    items: list[Schedule]


class FinishedMinute(BaseModel):
    minute: int = Field(description="the minute's start, ms since the epoch")
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0


class QueueInfo(BaseModel):
    """A queue at a glance: `GET /v1/queues`."""

    name: str
    paused: bool
    counts: dict[str, int] = Field(
        description="jobs by status now: scheduled, waiting, queued (undelivered, in the "
        "stream or the ordered backlog; not those held at a rate limit or cap), running "
        "(delivered, not yet acknowledged)"
    )
    length: int = Field(description="entries in the jobs stream: undelivered + pending")
    pending: int
    lag: int
    backlog: int = Field(
        description="queued jobs in the ordered backlog, there while jobs of more than one "
        "priority or tenant wait"
    )
    delayed: int
    dead_lettered: int
    consumers: int
    finished_per_minute: list[FinishedMinute] = Field(description="the last hour, oldest first")


class QueueList(BaseModel):
    items: list[QueueInfo]


class DeadRetry(BaseModel):
    retried: int
    skipped: int = Field(description="no longer failed, or expired")
