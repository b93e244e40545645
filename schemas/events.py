"""Event types: every state change of a job is published as exactly one of these."""

from __future__ import annotations

import enum


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
