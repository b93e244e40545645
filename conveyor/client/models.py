"""What the client returns: the gateway's answers, typed, and tolerant of fields a newer
gateway adds (kept as extra attributes rather than refused)."""

from __future__ import annotations

from typing import Any, TypedDict

from pydantic import BaseModel, ConfigDict, Field

from schemas import models
from schemas.events import TERMINAL_EVENTS
from schemas.status import JobStatus

SNAPSHOT = "snapshot"


class Job(models.Job):
    """A job's snapshot as `GET /v1/jobs/{id}` answers it."""

    model_config = ConfigDict(extra="allow")

    links: dict[str, str] = Field(default_factory=dict)


class JobPage(BaseModel):
    """One page of `GET /v1/jobs`, newest first; `next_cursor` is None on the last."""

    model_config = ConfigDict(extra="allow")

    items: list[Job]
    next_cursor: str | None = None


class Event(BaseModel):
    """One event of a job, as `GET /v1/jobs/{id}/history` and its SSE stream carry it. `id` is
    the Redis stream entry id, so ids only grow. `event` is an `EventType` value (a plain str,
    so that an event type newer than this client is still delivered), or `snapshot`: the job
    as a whole, with the snapshot in `data`, sent when its history no longer reaches back far
    enough to be replayed."""

    model_config = ConfigDict(extra="allow")

    id: str
    event: str
    job_id: str
    status: JobStatus
    attempt: int = 0
    ts: int = 0
    data: dict[str, Any] = Field(default_factory=dict)

    @property
    def is_terminal(self) -> bool:
        """The job's last event: it ended (the stream ends after it)."""
        if self.event == SNAPSHOT:
            return self.status.is_terminal
        return self.event in TERMINAL_EVENTS

    @classmethod
    def from_snapshot(cls, job: Job) -> Event:
        return cls(
            id=job.last_event_id or "0-0",
            event=SNAPSHOT,
            job_id=job.id,
            status=job.status,
            attempt=job.attempt,
            ts=job.updated_at,
            data=job.model_dump(mode="json"),
        )


class SubmitOptions(TypedDict, total=False):
    """The options of a submit, as `POST /v1/jobs` names them (`idempotency_key` is sent as
    the `Idempotency-Key` header). A gateway that does not know one answers 422 naming it."""

    queue: str
    delay_s: float
    max_attempts: int
    timeout_s: float
    priority: int
    idempotency_key: str
    children: list[dict[str, Any]]
    on_child_failure: str
    callback_url: str
    cache_ttl_s: float
    cache_key: str
