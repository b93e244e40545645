"""The job store: the only code that writes job state (Lua scripts, each one change) and the
one place that reads it back."""

from producer.producer import (
    Delivery,
    Lease,
    LeaseState,
    Producer,
    ReclaimReport,
    Submitted,
    Taken,
    new_job_id,
)
from producer.reads import Page, Position, QueueStats

__all__ = [
    "Delivery",
    "Lease",
    "LeaseState",
    "Page",
    "Position",
    "Producer",
    "QueueStats",
    "ReclaimReport",
    "Submitted",
    "Taken",
    "new_job_id",
]
