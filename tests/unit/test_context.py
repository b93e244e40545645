"""consumers/context.py: the timings a job's completion is logged with, on a fake clock."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from consumers import context
from consumers.context import JobContext


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(context.time, "monotonic", fake)
    return fake


def job_context() -> JobContext:
    async def report(*_: Any) -> None: ...

    return JobContext(
        job_id="j",
        queue="q",
        job_type="t",
        attempt=1,
        worker_ctx={},
        report_progress=report,
        storage=None,
        log=logging.LoggerAdapter(logging.getLogger("test")),
    )


def test_a_job_that_reports_no_stage_was_running_all_along(clock: Clock) -> None:
    ctx = job_context()
    clock.now += 1.5
    assert ctx.timings() == (1.5, {"running": 1.5})
    clock.now += 0.25  # asked again (a failure after a success's write was refused)
    assert ctx.timings() == (1.75, {"running": 1.75})


async def test_time_before_the_first_stage_counts_as_running(clock: Clock) -> None:
    ctx = job_context()
    clock.now += 1
    await ctx.progress(10, stage="downloading")
    clock.now += 2
    await ctx.progress(50, stage="uploading")
    clock.now += 0.5
    assert ctx.timings() == (3.5, {"running": 1, "downloading": 2, "uploading": 0.5})
