"""The README's handler example runs as written: `conveyor worker --handlers examples.media`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from conveyor.process import ManagedProcess
from schemas import JobStatus
from tests.integration.helpers import Driver, wait_for_terminal

pytestmark = pytest.mark.integration


async def test_the_media_example_runs_each_kind_of_handler(
    driver: Driver, spawn_worker: Callable[..., ManagedProcess], tmp_path: Path
) -> None:
    jobs = {
        await driver.submit("transcode", payload={"seconds": 1}): None,
        await driver.submit("checksum", payload={"size_mb": 4}): None,
        await driver.submit("analyse", payload={"limit": 100_000}): {"primes": 9592},
    }
    spawn_worker("media", CONVEYOR_HANDLERS="examples.media")
    terminal = await wait_for_terminal(driver.redis, driver.queue, set(jobs), 60)
    assert terminal == {job_id: ["job.succeeded"] for job_id in jobs}
    transcode, checksum, _ = jobs
    for job_id, expected in jobs.items():
        job = await driver.producer.get(driver.queue, job_id)
        assert job is not None and job.status is JobStatus.SUCCEEDED
        if expected is not None:
            assert job.result == expected
    events = await driver.producer.events(driver.queue, transcode)
    stages = {e.data.get("stage") for e in events if e.event.value == "job.progress"}
    assert stages == {"transcoding"}
    transcoded = await driver.producer.get(driver.queue, transcode)
    assert transcoded is not None and transcoded.result["bytes"] > 0
    checksum_job = await driver.producer.get(driver.queue, checksum)
    assert checksum_job is not None and len(checksum_job.result["sha256"]) == 64
