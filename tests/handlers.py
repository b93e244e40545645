"""Handlers for the tests: the built-ins plus ones that crash, hang, fail and clean up."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

from arq.worker import Retry, func
from pydantic import BaseModel, ConfigDict, Field

from consumers.context import JobContext
from consumers.errors import PermanentError, RetryableError
from consumers.handlers.builtin import noop, sleep
from consumers.hooks import on_failure
from consumers.registry import declare
from schemas.models import Job


async def crash(ctx: JobContext, **_: Any) -> None:
    """Kills its own process, as a segfault or an OOM kill would."""
    os.kill(os.getpid(), signal.SIGKILL)


async def permanent(ctx: JobContext, reason: str = "bad input") -> None:
    raise PermanentError(reason)


async def upstream_timeout(ctx: JobContext) -> None:
    """Its own TimeoutError (a client library's deadline), not the job's timeout."""
    raise TimeoutError("upstream took too long")


async def unstorable(ctx: JobContext, kind: Literal["deep", "nan", "set"]) -> Any:
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


# --- multi-step jobs ----------------------------------------------------------------------


async def pipeline(
    ctx: JobContext,
    path: str,
    fail_third: int = 0,
    crash_in_two: bool = False,
    pause_in_two: float = 0.0,
) -> dict[str, Any]:
    """Three steps, each appending `job_id step attempt` to `path` when it really runs (so
    tests count executions). Step three fails its first `fail_third` attempts; on attempt 1
    step two kills the process (`crash_in_two`) or lingers `pause_in_two` seconds."""

    def ran(step: str) -> None:
        with open(path, "a") as f:
            f.write(f"{ctx.job_id} {step} {ctx.attempt}\n")

    async def one() -> dict[str, int]:
        ran("one")
        return {"frames": 3}

    async def two(downloaded: dict[str, int]) -> int:
        ran("two")
        if ctx.attempt == 1 and crash_in_two:
            os.kill(os.getpid(), signal.SIGKILL)
        if ctx.attempt == 1 and pause_in_two:
            await asyncio.sleep(pause_in_two)
        return downloaded["frames"] * 2

    def three(frames: int) -> int:  # a plain function is a step too
        ran("three")
        if ctx.attempt <= fail_third:
            raise RetryableError("upstream hiccup")
        return frames + 1

    first = await ctx.step("one", one)
    second = await ctx.step("two", two, first)
    return {"third": await ctx.step("three", three, second)}


def pipeline_def(ctx: Any, path: str, fail_second: int = 0) -> list[Any]:
    """Two steps from a handler's thread."""

    def ran(step: str) -> str:
        with open(path, "a") as f:
            f.write(f"{ctx.job_id} {step} {ctx.attempt}\n")
        if step == "b" and ctx.attempt <= fail_second:
            raise RetryableError("again")
        return step

    return [ctx.step("a", ran, "a"), ctx.step("b", ran, "b")]


async def twice(ctx: JobContext) -> None:
    """Uses one step name twice: a permanent error."""
    await ctx.step("same", lambda: 1)
    await ctx.step("same", lambda: 2)


# --- flows ----------------------------------------------------------------------------------


async def tick(ctx: JobContext, i: int, seconds: float = 0.0, path: str = "") -> dict[str, int]:
    """A child: appends `job_id i` to `path` when it runs, lingers, returns its number."""
    if path:
        with open(path, "a") as f:
            f.write(f"{ctx.job_id} {i}\n")
    if seconds:
        await asyncio.sleep(seconds)
    return {"i": i}


async def gather(
    ctx: JobContext, path: str = "", follow_up: str = "", fail_first: bool = False
) -> dict[str, Any]:
    """A parent: appends `job_id attempt` to `path` when it runs; returns what it saw of its
    children. With `follow_up`, submits one follow-up job of that type (idempotently), then
    fails its first attempt when `fail_first`."""
    if path:
        with open(path, "a") as f:
            f.write(f"{ctx.job_id} {ctx.attempt}\n")
    statuses: dict[str, int] = {}
    for child in ctx.children.values():
        statuses[child["status"]] = statuses.get(child["status"], 0) + 1
    seen = sorted(c["result"]["i"] for c in ctx.children.values() if c["result"] is not None)
    out: dict[str, Any] = {"statuses": statuses, "results": seen}
    if follow_up:
        out["follow_up"] = await ctx.submit(follow_up, {"i": -1}, name="next")
        if fail_first and ctx.attempt == 1:
            raise RetryableError("after submitting")
    return out


# --- payloads: declared models, and errors of the handler's own -------------------------


class Area(BaseModel):
    """A payload model declared explicitly."""

    model_config = ConfigDict(extra="forbid")

    width: int = Field(ge=0)
    height: int = Field(ge=0)


async def area(ctx: JobContext, size: Area) -> dict[str, Any]:
    """Takes its payload whole, as the validated model."""
    return {"area": size.width * size.height, "given": type(size).__name__}


async def add(ctx: JobContext, a: int, b: Any) -> Any:
    """`b` may be anything, so `{"a": 1, "b": "x"}` fits, and fails inside the handler: a
    TypeError of its own, retried like any other error."""
    return a + b


async def submit_bad(ctx: JobContext) -> None:
    """Submits a follow-up whose payload does not fit its type."""
    await ctx.submit("tick", {"nope": 1})


async def limited(ctx: JobContext, path: str, calls: int, rate: str = "20/s") -> None:
    """Calls an upstream `calls` times under a limit shared by every worker; appends each
    call's start (Redis's clock, ms) to `path`."""
    for _ in range(calls):
        async with ctx.limit("upstream", rate) as slot_ms:
            with open(path, "a") as f:
                f.write(f"{slot_ms}\n")


def limited_def(ctx: Any, path: str, calls: int, rate: str = "20/s") -> None:
    for _ in range(calls):
        with ctx.limit("upstream", rate) as slot_ms, open(path, "a") as f:
            f.write(f"{slot_ms}\n")


# --- heavy handlers: blocking, CPU-bound, in child processes ------------------------------


async def block_loop(ctx: JobContext, seconds: float, path: str, on_attempt: int = 0) -> Any:
    """Blocks the event loop (`time.sleep` standing in for a sync client or ffmpeg through
    subprocess.run) on `on_attempt` (0: every attempt); records each run to count them."""
    with open(path, "a") as f:
        f.write(f"{ctx.job_id} {ctx.attempt} {os.getpid()}\n")
    if not on_attempt or ctx.attempt == on_attempt:
        time.sleep(seconds)  # noqa: ASYNC251 - the point of this handler
    return {"attempt": ctx.attempt}


def blocking_def(ctx: Any, seconds: float, steps: int = 4) -> dict[str, Any]:
    """A plain `def`: runs in a thread, reports progress without `await`."""
    for i in range(steps):
        time.sleep(seconds / steps)
        ctx.progress(100 * (i + 1) / steps, stage="blocking")
    return {"slept": seconds, "thread": ctx.job_id}


def allocate(mb: int) -> int:
    return len(bytearray(mb * 2**20))


def burn_cpu() -> None:
    while True:
        pass


def square(x: int) -> int:
    return x * x


async def hog_memory(ctx: JobContext, mb: int, limit_mb: int) -> int:
    return await ctx.run_process(allocate, mb, memory_mb=limit_mb)


async def hog_cpu(ctx: JobContext, cpu_s: float) -> None:
    await ctx.run_process(burn_cpu, cpu_s=cpu_s)


async def long_command(
    ctx: JobContext, marker: str, seconds: float = 60, later_s: float | None = None
) -> None:
    """`sleep 60` as a child (`later_s` on later attempts); the first attempt's child pid goes
    to `marker` once it runs."""
    if ctx.attempt > 1 and later_s is not None:
        seconds = later_s
    await ctx.run_command(
        ["sleep", str(seconds)],
        on_start=lambda pid: ctx.attempt == 1 and Path(marker).write_text(str(pid)),
    )


async def mixed(ctx: JobContext, kind: Literal["async", "process"], path: str) -> Any:
    """One of three kinds of work for the chaos test; each run is recorded."""
    with open(path, "a") as f:
        f.write(f"{ctx.job_id} {ctx.attempt} {os.getpid()}\n")
    if kind == "process":
        return await ctx.run_process(square, 7)
    await asyncio.sleep(0.05)
    return kind


def mixed_def(ctx: Any, path: str) -> str:
    with open(path, "a") as f:
        f.write(f"{ctx.job_id} {ctx.attempt} {os.getpid()}\n")
    time.sleep(0.05)
    return "def"


async def occupy(ctx: JobContext, seconds: float = 0.0, **_: Any) -> None:
    """Holds its slot for `seconds`; any other payload fields are for gates' keys."""
    await asyncio.sleep(seconds)


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
        func(block_loop, name="block_loop"),  # type: ignore[arg-type]
        func(block_loop, name="block_loop_2s", timeout=2),  # type: ignore[arg-type]
        blocking_def,  # a plain def, listed as it is
        declare(mixed_def, name="mixed_def", timeout=30),
        func(hog_memory, name="hog_memory"),  # type: ignore[arg-type]
        func(hog_cpu, name="hog_cpu"),  # type: ignore[arg-type]
        func(long_command, name="long_command"),  # type: ignore[arg-type]
        declare(long_command, name="long_command_1s", timeout=1, max_tries=1),
        func(mixed, name="mixed"),  # type: ignore[arg-type]
        func(upstream_timeout, name="upstream_timeout", max_tries=1),  # type: ignore[arg-type]
        func(pipeline, name="pipeline"),  # type: ignore[arg-type]
        pipeline_def,
        func(twice, name="twice"),  # type: ignore[arg-type]
        func(tick, name="tick"),  # type: ignore[arg-type]
        func(gather, name="gather"),  # type: ignore[arg-type]
        func(submit_bad, name="submit_bad"),  # type: ignore[arg-type]
        func(limited, name="limited"),  # type: ignore[arg-type]
        limited_def,
        func(area, name="area"),  # type: ignore[arg-type]
        declare(noop, name="noop_area", payload=Area),  # fields as keyword arguments
        func(add, name="add", max_tries=2),  # type: ignore[arg-type]
        # Flow control (schemas/gates.py), shared by every worker of the queue
        declare(noop, name="rated", rate_limit="20/s"),
        declare(noop, name="rated_per_tenant", rate_limit="20/s", rate_key="tenant"),
        declare(occupy, name="capped", max_running=2, concurrency_key="tenant"),
        declare(
            occupy, name="capped_per_account", max_running=1, concurrency_key="payload.account"
        ),
    ]
