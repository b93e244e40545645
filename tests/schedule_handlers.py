"""Worker settings with an arq cron job that ticks every second (tests/integration/
test_schedules.py), apart from tests/handlers.py so other tests' queues get no such jobs."""

from __future__ import annotations

from typing import Any, ClassVar

from arq.cron import cron

from consumers.context import JobContext
from consumers.handlers import BUILTIN_FUNCTIONS


async def beat(ctx: JobContext) -> str:
    return ctx.job_id


class WorkerSettings:
    functions: ClassVar[list[Any]] = [*BUILTIN_FUNCTIONS]
    cron_jobs: ClassVar[list[Any]] = [cron(beat, name="beat", second=set(range(60)))]
