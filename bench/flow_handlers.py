"""The handlers `bench.flow_control` drains (`CONVEYOR_HANDLERS=bench.flow_handlers`): the
same no-op as `plain`, `rated` and `capped`, the last two behind gates that no job waits at
(so a drain counts what the gates themselves cost: `rated` has a key per job, see
bench/flow_control.py; `capped` allows far more than a consumer runs); `sleepy`, whose
10 ms keep tenant A's backlog waiting while tenant B's jobs take their turns; `rated500`,
whose rate does hold jobs back. Every job's payload carries its `k`."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from consumers.context import JobContext
from consumers.registry import declare


async def noop(ctx: JobContext, **_: Any) -> None:
    return None


async def sleepy(ctx: JobContext, seconds: float = 0.01, **_: Any) -> None:
    await asyncio.sleep(seconds)


class WorkerSettings:
    functions: ClassVar[list[Any]] = [
        declare(noop, name="plain"),
        declare(noop, name="rated", rate_limit="1000000/s", rate_key="payload.k"),
        declare(noop, name="capped", max_running=1_000_000, concurrency_key="tenant"),
        declare(noop, name="rated500", rate_limit="500/s"),
        declare(sleepy, name="sleepy"),
    ]
