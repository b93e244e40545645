"""Event types: every state change of a job is published as exactly one of these."""

from __future__ import annotations

import enum

from schemas.status import JobStatus


class EventType(enum.StrEnum):
    SCHEDULED = "job.scheduled"
    QUEUED = "job.queued"
    STARTED = "job.started"
    PROGRESS = "job.progress"
    RETRYING = "job.retrying"
    RECLAIMED = "job.reclaimed"
    CANCEL_REQUESTED = "job.cancel_requested"
    SUCCEEDED = "job.succeeded"
    FAILED = "job.failed"
    CANCELLED = "job.cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_EVENTS


TERMINAL_EVENTS: frozenset[EventType] = frozenset(
    {EventType.SUCCEEDED, EventType.FAILED, EventType.CANCELLED}
)

# The event a job publishes on entering each status.
EVENT_FOR_STATUS: dict[JobStatus, EventType] = {
    JobStatus.SCHEDULED: EventType.SCHEDULED,
    JobStatus.QUEUED: EventType.QUEUED,
    JobStatus.RUNNING: EventType.STARTED,
    JobStatus.SUCCEEDED: EventType.SUCCEEDED,
    JobStatus.FAILED: EventType.FAILED,
    JobStatus.CANCELLED: EventType.CANCELLED,
}
