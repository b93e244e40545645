"""The handler `bench.steps` drains (`CONVEYOR_HANDLERS=bench.step_handlers`): `stepped`
runs `steps` no-op steps, so its jobs with `steps=0` are the same job without any."""

from __future__ import annotations

from typing import Any, ClassVar

from consumers.context import JobContext


def noop_step() -> None:
    return None


async def stepped(ctx: JobContext, steps: int = 0) -> None:
    for i in range(steps):
        await ctx.step(f"s{i}", noop_step)


class WorkerSettings:
    functions: ClassVar[list[Any]] = [stepped]
