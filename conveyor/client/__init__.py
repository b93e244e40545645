"""The Python client of Conveyor's gateway, over httpx:

    from conveyor.client import Client

    with Client("http://127.0.0.1:8000", api_key) as client:
        job = client.submit("sleep", {"seconds": 2}, priority=7)
        for event in client.events(job.id):
            print(event.event, event.data)
        print(client.wait(job.id, timeout=60).result)

`AsyncClient` is the same, awaited. Errors are the tree in `conveyor.client.errors`.
"""

from conveyor.client.async_client import AsyncClient
from conveyor.client.errors import (
    ApiError,
    AuthError,
    Conflict,
    JobCancelled,
    JobError,
    JobFailed,
    NetworkError,
    NotFound,
    RateLimited,
    TimeoutError,
    Unavailable,
    ValidationError,
)
from conveyor.client.models import Event, Job, JobPage, SubmitOptions
from conveyor.client.retries import Retries
from conveyor.client.sync_client import Client
from schemas.errors import ConveyorError
from schemas.status import JobStatus

__all__ = [
    "ApiError",
    "AsyncClient",
    "AuthError",
    "Client",
    "Conflict",
    "ConveyorError",
    "Event",
    "Job",
    "JobCancelled",
    "JobError",
    "JobFailed",
    "JobPage",
    "JobStatus",
    "NetworkError",
    "NotFound",
    "RateLimited",
    "Retries",
    "SubmitOptions",
    "TimeoutError",
    "Unavailable",
    "ValidationError",
]
