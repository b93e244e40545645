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
    STEP = "job.step"  # a step of a multi-step job started, succeeded, failed or was restored
    WAITING = "job.waiting"  # a parent was created; it waits for its children
    CHILD_ENDED = "job.child_ended"  # one of a parent's children ended

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_EVENTS


TERMINAL_EVENTS: frozenset[EventType] = frozenset(
    {EventType.SUCCEEDED, EventType.FAILED, EventType.CANCELLED}
)


class StepState(enum.StrEnum):
    """The `state` of a `job.step` event and of a step's record in the snapshot."""

    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RESTORED = "restored"  # taken from an earlier attempt instead of running again
