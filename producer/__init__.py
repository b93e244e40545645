"""The only code that writes job state: Lua scripts and a small async API over them."""

from producer.producer import (
    Delivery,
    Lease,
    LeaseState,
    Producer,
    QueueStats,
    ReclaimReport,
    Submitted,
    Taken,
    new_job_id,
)

__all__ = [
    "Delivery",
    "Lease",
    "LeaseState",
    "Producer",
    "QueueStats",
    "ReclaimReport",
    "Submitted",
    "Taken",
    "new_job_id",
]
