"""What the client raises, one tree under Conveyor's base exception:

ConveyorError (schemas.errors)
├── ApiError              the gateway answered with an error: `.status_code`, `.error`, `.message`
│   ├── AuthError         401, 403: the API key is missing, unknown or not allowed this
│   ├── NotFound          404: no such job (another tenant's job is answered the same)
│   ├── Conflict          409: the job's status does not allow it (`.status`, when said)
│   ├── ValidationError   422: the gateway does not take what was sent (`.detail`)
│   ├── RateLimited       429: over a quota; `.retry_after` says when to try again
│   └── Unavailable       503: Redis did not answer in time, or is full
├── NetworkError          the gateway could not be reached, or the connection broke
├── JobError              a job ended other than `succeeded`: `.job` is its final snapshot
│   ├── JobFailed
│   └── JobCancelled
└── TimeoutError          `wait` ran out of time; also a builtins.TimeoutError
"""

from __future__ import annotations

import builtins
import email.utils
import time
from typing import Any

import httpx

from conveyor.client.models import Job
from schemas.errors import ConveyorError
from schemas.status import JobStatus


class ApiError(ConveyorError):
    """The gateway answered `status_code` with its JSON error body `{error, message, ...}`."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        error: str = "http_error",
        body: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status_code} {message}")
        self.status_code = status_code
        self.message = message
        self.error = error
        self.body = body or {}
        self.retry_after = retry_after


class AuthError(ApiError):
    pass


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    @property
    def status(self) -> str | None:
        """The job's status that refused the request, when the gateway said it."""
        status = self.body.get("status")
        return status if isinstance(status, str) else None


class ValidationError(ApiError):
    @property
    def detail(self) -> list[dict[str, Any]]:
        """pydantic-style `{loc, msg, type}` items, one per refused field."""
        detail = self.body.get("detail")
        return detail if isinstance(detail, list) else []


class RateLimited(ApiError):
    pass


class Unavailable(ApiError):
    pass


class NetworkError(ConveyorError):
    """No answer from the gateway; `__cause__` is httpx's exception."""


class JobError(ConveyorError):
    def __init__(self, message: str, job: Job) -> None:
        super().__init__(message)
        self.job = job


class JobFailed(JobError):
    pass


class JobCancelled(JobError):
    pass


class TimeoutError(ConveyorError, builtins.TimeoutError):
    pass


_BY_STATUS: dict[int, type[ApiError]] = {
    401: AuthError,
    403: AuthError,
    404: NotFound,
    409: Conflict,
    422: ValidationError,
    429: RateLimited,
    503: Unavailable,
}


def api_error(status_code: int, body: Any, retry_after: float | None = None) -> ApiError:
    """The exception for an error answer: by status, carrying the gateway's own words. A body
    that is not the gateway's JSON (a proxy's HTML page) is kept as the message, shortened."""
    cls = _BY_STATUS.get(status_code, ApiError)
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        error = body.get("error")
        return cls(
            status_code,
            body["message"],
            error=error if isinstance(error, str) else "http_error",
            body=body,
            retry_after=retry_after,
        )
    text = body if isinstance(body, str) and body.strip() else f"HTTP {status_code}"
    return cls(status_code, text.strip()[:200], retry_after=retry_after)


def error_for(response: httpx.Response) -> ApiError:
    """The exception for `response`, whose body has been read."""
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    return api_error(response.status_code, body, retry_after(response))


def retry_after(response: httpx.Response) -> float | None:
    """`Retry-After` in seconds: a number of seconds or an HTTP date (RFC 9110, 10.2.3)."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def ended(job: Job) -> Job:
    """`job`, which has ended, if it succeeded; else the exception that says how it ended."""
    if job.status is JobStatus.FAILED:
        raise JobFailed(f"job {job.id} failed: {job.error}", job)
    if job.status is JobStatus.CANCELLED:
        raise JobCancelled(f"job {job.id} was cancelled: {job.error}", job)
    return job
