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

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from schemas.models import Job

if TYPE_CHECKING:
    from producer import Producer

logger = logging.getLogger("conveyor.worker")

FailureHook = Callable[[dict[str, Any], Job], Awaitable[None]]
HOOK_ATTRIBUTE = "on_failure"

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


class FailureHooks:
    """One consumer's share of a queue's `on_failure` hooks: `run_pending` reads a few
    dead-letter entries in the group, runs each one's hook and acknowledges it."""

    def __init__(
        self,
        producer: Producer,
        queue: str,
        consumer: str,
        hooks: Mapping[str, FailureHook],
        ctx: dict[str, Any],
        reclaim_idle_ms: int,
    ) -> None:
        self.producer = producer
        self.queue = queue
        self.consumer = consumer
        self.hooks = hooks  # by job type
        self.ctx = ctx
        self.reclaim_idle_ms = reclaim_idle_ms

    async def run_pending(self) -> None:
        # New entries first, then ones a dead consumer left unacknowledged.
        rows = await self.producer.dead_letters(
            self.queue, self.consumer, 16, 1000, self.reclaim_idle_ms
        )
        for entry_id, fields in rows:
            if fields:  # empty: trimmed while pending
                await self._run(fields)
            await self.producer.ack_dead_letter(self.queue, entry_id)

    async def _run(self, fields: dict[str, str]) -> None:
        hook = self.hooks.get(fields.get("type", ""))
        job = await self.producer.get(self.queue, fields["job_id"])
        if hook is None or job is None:
            return
        try:
            await hook(self.ctx, job)
        except Exception:
            # Acknowledged anyway: a hook that raises would raise again; the error is logged
            # with the job's identity for a person to follow up.
            logger.exception("on_failure hook for job %s raised", job.id, extra={"job_id": job.id})
