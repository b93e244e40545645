"""The job state machine: statuses and the transitions allowed between them.

This is the one definition. The Lua scripts get their transition table generated from
``TRANSITIONS`` (see ``producer.scripts``), so Redis refuses exactly what Python refuses.
"""

from __future__ import annotations

import enum


class JobStatus(enum.StrEnum):
    SCHEDULED = "scheduled"
    WAITING = "waiting"  # a parent whose children have not all ended
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL: frozenset[JobStatus] = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
)

# from -> the statuses it may move to. `running -> running` is a reclaim by another
# consumer (a new attempt, same status). `queued -> failed` is a poison entry whose
# consumers died before they could even start it. `waiting` is a parent of a flow: queued
# exactly once when its last child ends, failed at once by a failed child (`fail` policy).
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.SCHEDULED: frozenset({JobStatus.QUEUED, JobStatus.CANCELLED}),
    JobStatus.WAITING: frozenset({JobStatus.QUEUED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.RUNNING: frozenset(
        {
            JobStatus.RUNNING,
            JobStatus.SCHEDULED,
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.CANCELLED,
        }
    ),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset({JobStatus.QUEUED}),
    JobStatus.CANCELLED: frozenset({JobStatus.QUEUED}),
}
