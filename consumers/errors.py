"""The exceptions a handler raises to steer a failed attempt (defined once, in
`schemas.errors`; re-exported here because handlers import them from the consumer side).

Any other exception from a handler is retryable: the job is retried with backoff while
attempts are left. arq's `Retry(defer=...)` works too and chooses the delay.
"""

from schemas.errors import (
    ConveyorError,
    HandlerError,
    PermanentError,
    ResourceExceeded,
    RetryableError,
)

__all__ = [
    "ConveyorError",
    "HandlerError",
    "PermanentError",
    "ResourceExceeded",
    "RetryableError",
    "describe",
]

MAX_ERROR_CHARS = 2000


def describe(exc: BaseException) -> str:
    """An exception as a job's (or a step's) `error` text."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    # A lone surrogate in a message (a payload's text echoed back) cannot reach Redis as UTF-8.
    return text[:MAX_ERROR_CHARS].encode("utf-8", "replace").decode()
