"""What a handler receives as `ctx`: the job it runs and the tools to report on it.

Handlers are `async def handler(ctx, **payload)`, or plain `def handler(ctx, **payload)` for
blocking work, which runs in a thread and gets a `ThreadContext` (the same, with a `progress`
it calls without `await`). `ctx` also behaves like arq's ctx dict, so values put there by
`on_startup` hooks are reachable as `ctx["name"]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterator,
    Mapping,
    Sequence,
)
from typing import TYPE_CHECKING, Any, TypeVar

from consumers import children
from consumers.steps import Steps, run_step
from schemas import tracing
from schemas.rates import Rate

if TYPE_CHECKING:
    from consumers.storage import JobStorage
    from schemas.models import Artifact, SubmitRequest

ProgressSink = Callable[[float | None, str | None, str | None], Awaitable[None]]
Submitter = Callable[["SubmitRequest", str], Awaitable[str]]  # (request, idempotency key) -> id
Reserver = Callable[[str, Rate], Coroutine[Any, Any, tuple[float, float]]]  # -> (wait s, slot ms)
T = TypeVar("T")


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
        steps: Callable[[], Steps] | None = None,
        submit: Submitter | None = None,
        reserve: Reserver | None = None,
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
        # Made at the first `step`: most jobs have none, and a consumer makes a ctx per job.
        self._make_steps = steps
        self._steps: Steps | None = None
        self._submit = submit
        self._reserve = reserve
        self._submitted = 0
        # A parent's children as they ended, child id -> {type, status, result, error}: read
        # before the handler runs (empty for a job without children).
        self.children: dict[str, dict[str, Any]] = {}

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
        if stage is not None:
            self._enter_stage(stage)
        final = percent is not None and percent >= 100
        if not (stage_changed or final) and now - self._last_report < self._min_interval:
            return
        self._last_report = now
        await self._report_progress(percent, stage, message)

    async def step(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run `fn(*args, **kwargs)` (a coroutine function or a plain one) as the job's step
        `name`, at most once per job to success: when an earlier attempt recorded its
        result, that result (JSON, or an `Artifact`) is returned and `fn` does not run.
        While it runs, the job's stage is `name`. See consumers/steps.py."""
        self._enter_stage(name)
        return await run_step(self._require_steps(), name, fn, *args, **kwargs)

    async def submit(
        self,
        job_type: str,
        payload: dict[str, Any] | None = None,
        *,
        name: str | None = None,
        **options: Any,
    ) -> str:
        """Submit a follow-up job (same tenant; this job's queue unless `queue=` says
        otherwise; any other submit option as a keyword) and return its id. Idempotent per
        (this job, `name`): a later attempt that submits under the same name gets the same
        job back instead of a second one. Without `name`, the n-th unnamed submit of the
        attempt is named `<type>#<n>`, which holds for a handler that submits in the same
        order each time."""
        from schemas.models import SubmitRequest

        if self._submit is None:
            raise RuntimeError("follow-up jobs are submitted from a job run by a worker")
        if name is None:
            self._submitted += 1
            name = f"{job_type}#{self._submitted}"
        options.setdefault("queue", self.queue)
        request = SubmitRequest(type=job_type, payload=payload or {}, **options)
        return await self._submit(request, f"{self.job_id}:{name}")

    @contextlib.asynccontextmanager
    async def limit(self, name: str, rate: str) -> AsyncIterator[float]:
        """`async with ctx.limit("upstream", "5/s"):` waits for a start under a rate limit
        that every worker of every queue shares (an upstream API's), spaced on Redis's
        clock; yields the start's time there (ms). See producer/scripts/limit.lua."""
        if self._reserve is None:
            raise RuntimeError("shared limits are for a job run by a worker")
        wait_s, slot_ms = await self._reserve(name, Rate.parse(rate))
        if wait_s:
            await asyncio.sleep(wait_s)  # the slot is ours: waiting for it is the limit
        yield slot_ms

    def _require_steps(self) -> Steps:
        if self._steps is None:
            if self._make_steps is None:
                raise RuntimeError("steps are recorded for a job run by a worker, not here")
            self._steps = self._make_steps()
        return self._steps

    def _enter_stage(self, stage: str) -> None:
        if stage != self._last_stage:
            self._close_stage(time.monotonic())
            self._last_stage = stage

    async def run_process(
        self,
        fn: Callable[..., T],
        *args: Any,
        memory_mb: int | None = None,
        cpu_s: float | None = None,
    ) -> T:
        """`fn(*args)` in a child process, with the kernel's memory and CPU limits; its result
        (both picklable). A cancel or the job's timeout kills the child's process group; a
        limit breach is `ResourceExceeded` (not retried). See consumers/children.py."""
        return await children.run_process(fn, *args, memory_mb=memory_mb, cpu_s=cpu_s)

    async def run_command(
        self,
        argv: Sequence[str],
        on_line: Callable[[str], Any] | None = None,
        *,
        memory_mb: int | None = None,
        cpu_s: float | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        on_start: Callable[[int], Any] | None = None,
    ) -> children.CommandResult:
        """Run a program (ffmpeg-style) in its own process group, handing each line of its
        output to `on_line` (for progress). Killed with its group on a cancel or the job's
        timeout; a nonzero exit is `CommandFailed` (retried), a limit breach
        `ResourceExceeded`. `on_start` is called with the child's pid once it runs."""
        return await children.run_command(
            argv,
            on_line=on_line,
            memory_mb=memory_mb,
            cpu_s=cpu_s,
            cwd=cwd,
            env=env,
            on_start=on_start,
        )

    def _close_stage(self, now: float) -> None:
        name = self._last_stage or "running"
        self._stage_seconds[name] = self._stage_seconds.get(name, 0.0) + now - self._stage_since
        self._stage_since = now

    def timings(self) -> tuple[float, dict[str, float]]:
        """(seconds since the attempt started, seconds per reported stage) for the log record
        of its completion. Time before the first stage counts as `running`."""
        now = time.monotonic()
        if self._last_stage is None and not self._stage_seconds:  # most jobs report none
            elapsed = round(now - self._started, 3)
            return elapsed, {"running": elapsed}
        self._close_stage(now)
        stages = {name: round(seconds, 3) for name, seconds in self._stage_seconds.items()}
        return round(now - self._started, 3), stages

    def __getitem__(self, name: str) -> Any:
        return self._worker_ctx[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self._worker_ctx.get(name, default)

    def __repr__(self) -> str:
        return f"<JobContext {self.queue}/{self.job_id} {self.job_type} attempt={self.attempt}>"


class ThreadContext:
    """The `ctx` of a plain `def` handler, which runs in a thread: the job's `JobContext`,
    with `progress` called without `await` (it waits until the report is written, so reports
    stay in order). `cancel_requested` turns true when the job is cancelled or times out:
    a thread cannot be stopped from outside, so a long handler should look at it."""

    def __init__(self, ctx: JobContext, loop: asyncio.AbstractEventLoop) -> None:
        self._ctx = ctx
        self._loop = loop

    def progress(
        self, percent: float | None = None, stage: str | None = None, message: str | None = None
    ) -> None:
        self._wait(self._ctx.progress(percent, stage, message))

    def step(self, name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`JobContext.step` for a handler's thread: `fn` is a plain function, run here."""
        steps = self._ctx._require_steps()
        self._ctx._enter_stage(name)
        with tracing.step(steps.span, name) as span:
            restored, value = self._wait(steps.begin(name))
            if restored:
                tracing.step_state(span, "restored")
                return value  # type: ignore[no-any-return]
            started = time.monotonic()
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                self._wait(steps.failed(name, started, exc))
                raise
            self._wait(steps.succeeded(name, started, result))
            tracing.step_state(span, "succeeded")
            return result

    @contextlib.contextmanager
    def limit(self, name: str, rate: str) -> Iterator[float]:
        """`JobContext.limit` for a handler's thread: `with ctx.limit("upstream", "5/s"):`."""
        reserve = self._ctx._reserve
        if reserve is None:
            raise RuntimeError("shared limits are for a job run by a worker")
        wait_s, slot_ms = self._wait(reserve(name, Rate.parse(rate)))
        if wait_s:
            time.sleep(wait_s)
        yield slot_ms

    def _wait(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    @property
    def cancel_requested(self) -> bool:
        return self._ctx.cancel_requested

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)

    def __getitem__(self, name: str) -> Any:
        return self._ctx[name]

    def __repr__(self) -> str:
        return f"<ThreadContext of {self._ctx!r}>"
