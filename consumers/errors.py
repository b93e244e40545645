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

__all__ = ["ConveyorError", "HandlerError", "PermanentError", "ResourceExceeded", "RetryableError"]
