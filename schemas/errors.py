"""Conveyor's exceptions, one tree:

ConveyorError
├── JobNotFound          no such job (or not the caller's: the same answer, no leak)
├── TransitionRefused    the job's status does not allow the request (HTTP 409)
├── UnknownJobType       no handler is registered for the type (HTTP 422)
├── IdempotencyConflict  the Idempotency-Key names a job the caller does not own (HTTP 409)
├── LeaseLost            a worker's attempt no longer holds its job: another one took it over
└── HandlerError         raised by handlers to steer what happens next
    ├── PermanentError   fail now: retrying cannot help (bad input, 4xx upstream)
    │   ├── ResourceExceeded  a child process went over its memory or CPU limit
    │   └── InvalidPayload    the payload does not fit the handler (HTTP 422 at the gateway)
    └── RetryableError   fail this attempt: retry with backoff if attempts are left
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError


class ConveyorError(Exception):
    """Base of every exception Conveyor raises on purpose."""


class JobNotFound(ConveyorError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id!r} not found")
        self.job_id = job_id


class TransitionRefused(ConveyorError):
    def __init__(self, job_id: str, status: str, action: str) -> None:
        super().__init__(f"cannot {action} job {job_id!r}: it is {status}")
        self.job_id = job_id
        self.status = status
        self.action = action


class UnknownJobType(ConveyorError):
    def __init__(self, job_type: str, known: list[str]) -> None:
        super().__init__(f"unknown job type {job_type!r}; known types: {', '.join(sorted(known))}")
        self.job_type = job_type


class IdempotencyConflict(ConveyorError):
    def __init__(self, key: str) -> None:
        super().__init__(f"Idempotency-Key {key!r} is in use by a job that is not yours")
        self.key = key


class LeaseLost(ConveyorError):
    """The attempt was fenced out: the job was reclaimed by another consumer (this one was
    frozen or cut off past its lease). Nothing more of this attempt is written."""


class HandlerError(ConveyorError):
    """Base for errors a handler raises to say how its failure should be treated."""


class PermanentError(HandlerError):
    """Fail the job now, without retrying."""


class ResourceExceeded(PermanentError):
    """A handler's child process (`ctx.run_process`, `ctx.run_command`) went over the memory
    or CPU limit it was given: running it again would go over it again."""


class InvalidPayload(PermanentError):
    """A payload that does not fit its job type's handler. The gateway answers 422 naming the
    field; a worker that still meets one (a job submitted around the gateway, or before the
    handler changed) fails the job at once, since no retry can make it fit.

    `errors` are pydantic's (`loc`, `msg`, `type`), each located from the submit body:
    `("payload", "seconds")`."""

    def __init__(self, job_type: str, errors: Sequence[Mapping[str, Any]]) -> None:
        self.job_type = job_type
        self.errors = [{"loc": tuple(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors]
        super().__init__(
            "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in self.errors)
        )

    @classmethod
    def from_validation(
        cls, job_type: str, exc: ValidationError, at: Sequence[str | int] = ("payload",)
    ) -> InvalidPayload:
        """From the payload model's ValidationError, its locations put under `at`."""
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        return cls(job_type, [{**e, "loc": (*at, *e["loc"])} for e in errors])


class RetryableError(HandlerError):
    """Fail this attempt; the job is retried with backoff while attempts are left."""
