"""arq's own queue doing the same no-op jobs, for `bench.engine` to compare against."""

from __future__ import annotations

import os
from typing import Any, ClassVar

from arq.connections import RedisSettings


async def noop(ctx: dict[str, Any], **payload: Any) -> dict[str, Any]:
    return payload


class WorkerSettings:
    functions: ClassVar[list[Any]] = [noop]
    redis_settings = RedisSettings.from_dsn(
        os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
    )
    burst = os.environ.get("BENCH_BURST") == "1"
    max_jobs = int(os.environ.get("BENCH_MAX_JOBS", "100"))
    keep_result = 3600
    poll_delay = 0.5  # arq's default
