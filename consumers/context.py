"""What a handler receives as `ctx`: the job it runs and the tools to report on it.

Handlers are `async def handler(ctx, **payload)`. `ctx` also behaves like arq's ctx dict,
so values put there by `on_startup` hooks are reachable as `ctx["name"]`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from consumers.storage import JobStorage
    from schemas.models import Artifact

ProgressSink = Callable[[float | None, str | None, str | None], Awaitable[None]]


class JobContext:
    """One running attempt of one job."""

    def __init__(
        self,
        *,
        job_id: str,
        queue: str,
        job_type: str,
        attempt: int,
        worker_ctx: Mapping[str, Any],
        report_progress: ProgressSink,
        storage: JobStorage | None,
        log: logging.LoggerAdapter[logging.Logger],
        min_progress_interval_s: float = 0.25,
    ) -> None:
        self.job_id = job_id
        self.queue = queue
        self.job_type = job_type
        self.attempt = attempt
        self.log = log
        self._worker_ctx = worker_ctx
        self._report_progress = report_progress
        self._storage = storage
        self._min_interval = min_progress_interval_s
        self._last_report = 0.0
        self._last_stage: str | None = None
        self.cancel_requested = False
        self._started = time.monotonic()
        self._stage_since = self._started
        self._stage_seconds: dict[str, float] = {}

    @property
    def storage(self) -> JobStorage:
        if self._storage is None:
            raise RuntimeError("this worker has no S3 storage configured (CONVEYOR_S3_ENDPOINT)")
        return self._storage

    @property
    def artifacts(self) -> list[Artifact]:
        """What this attempt uploaded; recorded on the job when it succeeds."""
        return list(self._storage.artifacts) if self._storage is not None else []

    async def progress(
        self, percent: float | None = None, stage: str | None = None, message: str | None = None
    ) -> None:
        """Report progress. Throttled: a handler may call this in a tight loop; a change of
        stage and 100% are always sent, other updates at most every `progress_interval_s`."""
        now = time.monotonic()
        stage_changed = stage is not None and stage != self._last_stage
        if stage_changed:
            self._close_stage(now)
            self._last_stage = stage
        final = percent is not None and percent >= 100
        if not (stage_changed or final) and now - self._last_report < self._min_interval:
            return
        self._last_report = now
        await self._report_progress(percent, stage, message)

    def _close_stage(self, now: float) -> None:
        name = self._last_stage or "running"
        self._stage_seconds[name] = self._stage_seconds.get(name, 0.0) + now - self._stage_since
        self._stage_since = now

    def timings(self) -> tuple[float, dict[str, float]]:
        """(seconds since the attempt started, seconds per reported stage) for the log record
        of its completion. Time before the first stage counts as `running`."""
        now = time.monotonic()
        self._close_stage(now)
        stages = {name: round(seconds, 3) for name, seconds in self._stage_seconds.items()}
        return round(now - self._started, 3), stages

    def __getitem__(self, name: str) -> Any:
        return self._worker_ctx[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self._worker_ctx.get(name, default)

    def __repr__(self) -> str:
        return f"<JobContext {self.queue}/{self.job_id} {self.job_type} attempt={self.attempt}>"
