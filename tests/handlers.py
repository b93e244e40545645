"""Handlers for the tests: the built-ins plus ones that crash, hang, fail and clean up."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any, ClassVar

from arq.worker import Retry, func

from consumers.context import JobContext
from consumers.errors import PermanentError
from consumers.handlers.builtin import noop, sleep
from consumers.hooks import on_failure
from schemas.models import Job


async def crash(ctx: JobContext, **_: Any) -> None:
    """Kills its own process, as a segfault or an OOM kill would."""
    os.kill(os.getpid(), signal.SIGKILL)


async def permanent(ctx: JobContext, reason: str = "bad input") -> None:
    raise PermanentError(reason)


async def upstream_timeout(ctx: JobContext) -> None:
    """Its own TimeoutError (a client library's deadline), not the job's timeout."""
    raise TimeoutError("upstream took too long")


async def unstorable(ctx: JobContext, kind: str) -> Any:
    """Returns what JSON cannot carry: its job must fail once, saying why."""
    deep: Any = 1
    for _ in range(300):
        deep = {"a": deep}
    return {"deep": deep, "nan": float("nan"), "set": {1, 2}}[kind]


async def flaky(ctx: JobContext, fail_attempts: int = 1, defer_s: float = 0.05) -> int:
    """arq's control-flow exception: retry after `defer_s`."""
    if ctx.attempt <= fail_attempts:
        raise Retry(defer=defer_s)
    return ctx.attempt


async def hang(ctx: JobContext, marker: str = "") -> None:
    """Runs until cancelled; records that its cleanup ran (a file, visible across processes)."""
    await ctx.progress(1, stage="hanging")
    try:
        await asyncio.Event().wait()
    finally:
        if marker:
            Path(marker).write_text(f"cleaned up attempt {ctx.attempt}")


async def record(ctx: JobContext, path: str, seconds: float = 0.0) -> str:
    """Appends `job_id attempt` to a file each time it runs, so tests count executions."""
    with open(path, "a") as f:
        f.write(f"{ctx.job_id} {ctx.attempt} {os.getpid()}\n")
    if seconds:
        steps = max(1, int(seconds * 4))
        for i in range(steps):
            await asyncio.sleep(seconds / steps)
            await ctx.progress(100 * (i + 1) / steps, stage="recording")
    return ctx.job_id


async def record_refund(ctx: dict[str, Any], job: Job) -> None:
    """The compensation: one line per call, so tests count calls."""
    with open(job.payload["refunds"], "a") as f:
        f.write(f"{job.id} {job.status.value} {job.error}\n")


@on_failure(record_refund)
async def charge(ctx: JobContext, refunds: str, crash: bool = False) -> None:
    """Fails for good (or kills its process): its refund must run exactly once."""
    if crash:
        os.kill(os.getpid(), signal.SIGKILL)
    raise PermanentError("card declined")


class WorkerSettings:
    functions: ClassVar[list[Any]] = [
        func(noop, name="noop"),  # type: ignore[arg-type]
        func(sleep, name="sleep"),  # type: ignore[arg-type]
        func(crash, name="crash"),  # type: ignore[arg-type]
        func(permanent, name="permanent"),  # type: ignore[arg-type]
        func(flaky, name="flaky"),  # type: ignore[arg-type]
        func(hang, name="hang"),  # type: ignore[arg-type]
        func(record, name="record"),  # type: ignore[arg-type]
        func(sleep, name="short_timeout", timeout=0.3, max_tries=2),  # type: ignore[arg-type]
        func(charge, name="charge"),  # type: ignore[arg-type]
        func(unstorable, name="unstorable"),  # type: ignore[arg-type]
        func(upstream_timeout, name="upstream_timeout", max_tries=1),  # type: ignore[arg-type]
    ]
