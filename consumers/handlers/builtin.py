"""The built-in job types `noop` and `sleep`: for benchmarks, smoke tests and demos."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from pydantic import Field

from consumers.context import JobContext
from consumers.errors import RetryableError


async def noop(ctx: JobContext, **payload: Any) -> dict[str, Any]:
    """Returns its payload."""
    return payload


async def sleep(
    ctx: JobContext,
    seconds: Annotated[float, Field(ge=0, description="how long, in all", examples=[5])],
    steps: Annotated[int, Field(ge=1, description="progress reports, evenly spaced")] = 10,
    fail_attempts: Annotated[
        int, Field(ge=0, description="attempts that fail on purpose (retryable) first")
    ] = 0,
) -> dict[str, Any]:
    """Sleeps `seconds`, reporting progress `steps` times; fails its first `fail_attempts`
    attempts with a retryable error (for demos and tests of retries)."""
    if ctx.attempt <= fail_attempts:
        raise RetryableError(
            f"failing attempt {ctx.attempt} of the first {fail_attempts} on purpose"
        )
    for step in range(1, steps + 1):
        await asyncio.sleep(seconds / steps)
        await ctx.progress(100 * step / steps, stage="sleeping")
    return {"slept_s": seconds, "attempt": ctx.attempt}
