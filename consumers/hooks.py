"""Compensation for failed jobs: `on_failure` hooks ("refund the credits").

    async def refund(ctx: dict, job: Job) -> None: ...

    @on_failure(refund)
    async def charge(ctx, **payload): ...

Every job that ends `failed` has exactly one entry in its queue's dead-letter stream, written
by the same script that failed it, whether its handler gave up or a reclaim found it poison.
Consumers read that stream in the group `on_failure`, so each entry reaches one consumer,
which runs the hook and acknowledges it: one call per failed job. A consumer that dies mid-
hook leaves the entry pending and another runs it again, so hooks should be idempotent (key
them on `job.id`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from schemas.models import Job

FailureHook = Callable[[dict[str, Any], Job], Awaitable[None]]
HOOK_ATTRIBUTE = "on_failure"
FAILURE_GROUP = "on_failure"

H = TypeVar("H", bound=Callable[..., Awaitable[Any]])


def on_failure(hook: FailureHook) -> Callable[[H], H]:
    """Declare `hook` as the compensation of the decorated handler."""

    def attach(handler: H) -> H:
        setattr(handler, HOOK_ATTRIBUTE, hook)
        return handler

    return attach


def failure_hook(handler: Callable[..., Any]) -> FailureHook | None:
    hook: FailureHook | None = getattr(handler, HOOK_ATTRIBUTE, None)
    return hook
