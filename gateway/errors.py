"""How failures become HTTP answers: always JSON `{"error", "message", ...}`, never a bare 500.

ConveyorError (schemas.errors)
├── JobNotFound          404 (also another tenant's job: no existence leak)
├── TransitionRefused    409 with the job's current `status`
├── IdempotencyConflict  409: the Idempotency-Key names a job the caller does not own
├── UnknownJobType       422
├── InvalidPayload       422 naming each field of the payload that does not fit its type
└── RedisUnavailable     503 with Retry-After: Redis did not answer within the deadline

and Redis's own refusals: OOM (maxmemory under noeviction) is 503 `store_full`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException

from schemas.errors import (
    ConveyorError,
    IdempotencyConflict,
    InvalidPayload,
    JobNotFound,
    TransitionRefused,
    UnknownJobType,
)
from schemas.strict_json import MAX_JSON_DEPTH

log = logging.getLogger("conveyor.gateway")
Handler = Callable[[Request, Exception], Awaitable[JSONResponse]]


class RedisUnavailable(ConveyorError):
    """Redis did not answer within `redis_timeout_s`."""


class QueueNotConfigured(ConveyorError):
    def __init__(self, queue: str, configured: list[str]) -> None:
        super().__init__(
            f"queue {queue!r} is not configured; configured queues: {', '.join(configured)}"
        )
        self.queue = queue


class CallbackNotSigned(ConveyorError):
    """A `callback_url` for a tenant that has no webhook secret: its receiver could not
    tell our deliveries from anyone's."""

    def __init__(self, tenant: str) -> None:
        super().__init__(
            f"no webhook secret is configured for tenant {tenant!r} "
            "(CONVEYOR_WEBHOOK_SECRETS), so callbacks cannot be signed"
        )


class TenantQuotaExceeded(ConveyorError):
    """CONVEYOR_TENANT_MAX_ACTIVE: the tenant has that many unfinished jobs already."""

    def __init__(self, tenant: str, active: int, limit: int, retry_after_s: int) -> None:
        super().__init__(
            f"tenant {tenant!r} has {active} unfinished jobs, and at most {limit} are allowed "
            "(CONVEYOR_TENANT_MAX_ACTIVE): submit again once some have ended"
        )
        self.retry_after_s = retry_after_s


@asynccontextmanager
async def redis_deadline(seconds: float) -> AsyncIterator[None]:
    """Bound every Redis round trip inside by one deadline: a frozen Redis answers 503 in
    `seconds`, not when the kernel gives up on the socket."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except (TimeoutError, RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise RedisUnavailable(f"redis did not answer within {seconds:g}s") from exc


def error(status_code: int, code: str, message: str, **extra: Any) -> JSONResponse:
    headers = {"Retry-After": "1"} if status_code == 503 else None
    return JSONResponse(
        {"error": code, "message": message, **extra}, status_code=status_code, headers=headers
    )


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in loc)


def validation_body(errors: Sequence[Any], prefix: Sequence[Any] = ()) -> dict[str, Any]:
    """A `422`'s body from pydantic's errors, each located under `prefix` (for a bulk item)."""
    detail = [{"loc": [*prefix, *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in errors]
    message = "; ".join(f"{_field(d['loc'])}: {d['msg']}" for d in detail)
    return {"error": "validation_error", "message": message, "detail": detail}


def conveyor_error_body(exc: ConveyorError) -> tuple[int, dict[str, Any]]:
    """The status and body a ConveyorError is answered with."""
    if isinstance(exc, JobNotFound):
        return 404, {"error": "not_found", "message": str(exc)}
    if isinstance(exc, IdempotencyConflict):
        return 409, {"error": "conflict", "message": str(exc)}
    if isinstance(exc, TransitionRefused):
        return 409, {"error": "conflict", "message": str(exc), "status": exc.status}
    if isinstance(exc, UnknownJobType):
        detail = [{"loc": ["body", "type"], "msg": str(exc), "type": "unknown_job_type"}]
        return 422, {"error": "validation_error", "message": f"body.type: {exc}", "detail": detail}
    if isinstance(exc, InvalidPayload):
        return 422, validation_body(exc.errors, ["body"])
    if isinstance(exc, QueueNotConfigured):
        detail = [{"loc": ["body", "queue"], "msg": str(exc), "type": "unknown_queue"}]
        return 422, {"error": "validation_error", "message": f"queue: {exc}", "detail": detail}
    if isinstance(exc, CallbackNotSigned):
        detail = [{"loc": ["body", "callback_url"], "msg": str(exc), "type": "unsigned"}]
        return 422, {
            "error": "validation_error",
            "message": f"callback_url: {exc}",
            "detail": detail,
        }
    if isinstance(exc, TenantQuotaExceeded):
        return 429, {"error": "too_many_active_jobs", "message": str(exc)}
    if isinstance(exc, RedisUnavailable):
        return 503, {"error": "unavailable", "message": str(exc)}
    log.error("unexpected %s", type(exc).__name__, exc_info=exc)
    return 500, {"error": "internal", "message": "internal error"}


async def _validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    body = validation_body(exc.errors())
    return error(422, body.pop("error"), body.pop("message"), **body)


async def _http(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if isinstance(exc.__cause__, RecursionError):
        # FastAPI's body parser ran out of stack: JSON nested hundreds of levels deep.
        why = f"nested deeper than {MAX_JSON_DEPTH} levels"
        detail = [{"loc": ["body"], "msg": why, "type": "value_error"}]
        return error(422, "validation_error", f"body: {why}", detail=detail)
    response = error(exc.status_code, _code_for(exc.status_code), str(exc.detail))
    if exc.headers:
        response.headers.update(exc.headers)
    return response


def _code_for(status: int) -> str:
    return {
        401: "unauthorized",
        404: "not_found",
        405: "method_not_allowed",
        413: "payload_too_large",
        503: "unavailable",
    }.get(status, "http_error")


async def _conveyor(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ConveyorError)
    status, body = conveyor_error_body(exc)
    response = error(status, body.pop("error"), body.pop("message"), **body)
    if isinstance(exc, TenantQuotaExceeded):
        response.headers["Retry-After"] = str(exc.retry_after_s)
    return response


async def _redis_refused(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ResponseError)
    status, body = refusal_body(exc)
    return error(status, body["error"], body["message"])


def refusal_body(exc: ResponseError) -> tuple[int, dict[str, Any]]:
    """The status and error body for a write Redis refused: for a request, or for the items
    of a bulk whose script call it refused."""
    # Scripts fail before their first write when Redis is out of memory (Redis refuses only
    # a script that has not written yet), so nothing was half-written either.
    # Inside a script Redis wraps it: "Error running script ... -OOM command not allowed".
    if isinstance(exc, OutOfMemoryError) or "OOM command not allowed" in str(exc):
        return 503, {
            "error": "store_full",
            "message": "the job store is full: Redis reached maxmemory (policy noeviction) "
            "and refused the write; nothing was written. Retry after memory is freed or "
            "maxmemory raised.",
        }
    log.error("unexpected Redis error: %s", exc)
    return 500, {"error": "internal", "message": "internal error"}


async def _redis_down(_: Request, exc: Exception) -> JSONResponse:
    return error(503, "unavailable", f"redis unavailable: {type(exc).__name__}")


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    # Starlette's ServerErrorMiddleware re-raises after answering, so the server logs it too.
    return error(500, "internal", "internal error")


HANDLERS: dict[type[Exception], Handler] = {
    RequestValidationError: _validation,
    HTTPException: _http,
    ConveyorError: _conveyor,
    RedisConnectionError: _redis_down,
    RedisTimeoutError: _redis_down,
    ResponseError: _redis_refused,
    Exception: _unexpected,
}


def handler_for(exc: Exception) -> Handler:
    """The handler `install` gives FastAPI for this exception (the nearest class of it), for
    code in front of the app that answers as the app would (gateway.direct)."""
    for cls in type(exc).__mro__:
        if cls in HANDLERS:
            return HANDLERS[cls]
    return _unexpected


def install(app: FastAPI) -> None:
    for cls, handler in HANDLERS.items():
        app.add_exception_handler(cls, handler)
