"""Storage through a real consumer: artifacts recorded atomically with success and served by
the gateway, an S3 outage mid-upload retried, a cancel mid-ingest aborting the upload, and a
consumer's memory while it streams a body much larger than it may hold."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from consumers.storage import MIN_PART_SIZE, Storage
from consumers.worker import ConveyorWorker, connect
from conveyor.embedded_s3 import EmbeddedS3
from conveyor.gateway_app import gateway_app
from schemas import JobStatus, Settings
from tests.fixtures.origin import Origin, body_of
from tests.fixtures.processes import conveyor_env, start_worker
from tests.fixtures.s3 import storage_for
from tests.integration.helpers import Driver, running, wait_for_event, wait_for_terminal

MIB = 1024 * 1024


def s3_settings(server: EmbeddedS3) -> dict[str, Any]:
    return {
        "s3_endpoint": server.endpoint,
        "s3_access_key": server.access_key,
        "s3_secret_key": server.secret_key,
        "s3_bucket": server.bucket,
        "s3_part_size": MIN_PART_SIZE,
        "ingest_allowed_hosts": ["127.0.0.1"],
        "api_keys": {"key-1": "t1"},
        "backoff_base_s": 0.05,
        "backoff_max_s": 0.2,
    }


async def open_uploads(server: EmbeddedS3, prefix: str) -> list[Any]:
    store = storage_for(server)
    try:
        return await store.list_open_uploads(prefix)
    finally:
        store.close()


async def test_ingest_records_the_artifact_and_the_gateway_serves_it(
    driver: Driver,
    settings_factory: Callable[..., Settings],
    s3_server: EmbeddedS3,
    origin: Origin,
) -> None:
    settings = settings_factory(**s3_settings(s3_server))
    size = 3 * MIN_PART_SIZE + 12345
    job_id = await driver.submit(
        "ingest_url", payload={"url": f"{origin.base}/bytes/{size}", "name": "../video.mp4"}
    )
    worker = ConveyorWorker(
        settings, connect(settings), queue=driver.queue, burst=True, handle_signals=False
    )
    await worker.async_run()
    await worker.close()

    job = await driver.producer.get(driver.queue, job_id)
    assert job is not None and job.status is JobStatus.SUCCEEDED, job
    (artifact,) = job.artifacts
    expected = hashlib.sha256(body_of(size)).hexdigest()
    assert (artifact.size, artifact.sha256) == (size, expected)
    assert artifact.key == f"{driver.queue}/{job_id}/video.mp4"  # no escaping the prefix
    events = await driver.producer.events(driver.queue, job_id)
    assert events[-1].data["artifacts"][0]["sha256"] == expected  # in the terminal event too
    assert any(e.data.get("stage") == "downloading" for e in events)
    assert [(s.name, s.state.value) for s in job.steps] == [
        ("fetch", "succeeded"),
        ("verify", "succeeded"),
    ]

    app = gateway_app(settings)
    async with (
        LifespanManager(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway"
        ) as client,
    ):
        response = await client.get(
            f"/v1/jobs/{job_id}/artifacts/{artifact.name}",
            headers={"Authorization": "Bearer key-1"},
        )
    assert response.status_code == 307
    async with httpx.AsyncClient() as s3_client:
        downloaded = await s3_client.get(response.headers["location"])
    assert downloaded.status_code == 200
    assert hashlib.sha256(downloaded.content).hexdigest() == expected


async def test_cancel_mid_ingest_aborts_the_upload(
    driver: Driver,
    settings_factory: Callable[..., Settings],
    s3_server: EmbeddedS3,
    origin: Origin,
) -> None:
    settings = settings_factory(**s3_settings(s3_server))
    # Two parts' worth, then the origin stalls: the multipart upload is open mid-stream.
    job_id = await driver.submit(
        "ingest_url", payload={"url": f"{origin.base}/stall/{2 * MIN_PART_SIZE + 10}"}
    )
    async with running(
        ConveyorWorker(settings, connect(settings), queue=driver.queue, handle_signals=False)
    ):
        await wait_for_event(driver.redis, driver.queue, job_id, "job.progress", 15)
        assert await driver.producer.cancel(driver.queue, job_id) == "requested"
        terminal = await wait_for_terminal(driver.redis, driver.queue, {job_id}, 10)
    assert terminal == {job_id: ["job.cancelled"]}
    assert await open_uploads(s3_server, f"{driver.queue}/{job_id}/") == []


async def test_s3_down_mid_upload_fails_the_attempt_and_the_retry_succeeds(
    driver: Driver,
    settings_factory: Callable[..., Settings],
    fresh_s3: Callable[[], EmbeddedS3],
    origin: Origin,
) -> None:
    server = fresh_s3()
    settings = settings_factory(**s3_settings(server))
    size = 3 * MIN_PART_SIZE
    job_id = await driver.submit("ingest_url", payload={"url": f"{origin.base}/stall/{size}"})
    async with running(
        ConveyorWorker(settings, connect(settings), queue=driver.queue, handle_signals=False)
    ):
        await wait_for_event(driver.redis, driver.queue, job_id, "job.progress", 15)
        server.kill()
        origin.release.set()  # the rest of the body arrives while S3 is gone
        retrying = await wait_for_event(driver.redis, driver.queue, job_id, "job.retrying", 30)
        assert "S3" in retrying["data"]  # the error says what failed
        server.start()
        terminal = await wait_for_terminal(driver.redis, driver.queue, {job_id}, 60)
    assert terminal == {job_id: ["job.succeeded"]}
    job = await driver.producer.get(driver.queue, job_id)
    assert job is not None and job.attempt >= 2
    assert job.artifacts[0].sha256 == hashlib.sha256(body_of(size)).hexdigest()
    assert await open_uploads(server, f"{driver.queue}/{job_id}/") == []


@pytest.mark.parametrize("size_mib", [512])
async def test_consumer_streams_a_large_body_in_bounded_memory(
    driver: Driver,
    s3_server: EmbeddedS3,
    origin: Origin,
    redis_server: Any,
    tmp_path: Path,
    size_mib: int,
) -> None:
    job_id = await driver.submit(
        "ingest_url", payload={"url": f"{origin.base}/blocks/{size_mib * MIB}"}
    )
    env = conveyor_env(
        CONVEYOR_REDIS_URL=redis_server.url,
        CONVEYOR_S3_ENDPOINT=s3_server.endpoint,
        CONVEYOR_S3_ACCESS_KEY=s3_server.access_key,
        CONVEYOR_S3_SECRET_KEY=s3_server.secret_key,
        CONVEYOR_S3_BUCKET=s3_server.bucket,
        CONVEYOR_INGEST_ALLOWED_HOSTS="127.0.0.1",
    )
    worker = start_worker(env, queue=driver.queue, log_dir=tmp_path)
    try:
        terminal = await wait_for_terminal(driver.redis, driver.queue, {job_id}, 120)
        assert terminal == {job_id: ["job.succeeded"]}, worker.log_tail()
        status = Path(f"/proc/{worker.pid}/status").read_text()
        peak_kib = int(
            next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]
        )
    finally:
        worker.stop()
    job = await driver.producer.get(driver.queue, job_id)
    assert job is not None and job.artifacts[0].size == size_mib * MIB
    # A worker's own baseline (Python, redis, minio, httpx) is ~60 MiB; parts are 8 MiB.
    assert peak_kib < 200 * 1024, f"peak RSS {peak_kib // 1024} MiB for a {size_mib} MiB body"


def test_presigned_urls_can_name_a_public_host() -> None:
    store = Storage(
        endpoint="minio:9000",
        access_key="a",
        secret_key="b" * 16,
        bucket="conveyor",
        public_endpoint="https://files.example.test",
    )
    try:
        url = store.presigned_get_url("q/job/out.bin", 60)
    finally:
        store.close()
    assert url.startswith("https://files.example.test/conveyor/q/job/out.bin?")


async def test_the_pipeline_example_resumes_after_its_failing_step(
    driver: Driver,
    settings_factory: Callable[..., Settings],
    s3_server: EmbeddedS3,
    origin: Origin,
) -> None:
    """examples/pipeline.py as the README shows it: its transcode step fails twice; the
    retries get the download and the checksum back, so the URL is fetched once."""
    settings = settings_factory(**s3_settings(s3_server), handlers="examples.pipeline")
    size = 2 * MIN_PART_SIZE + 99
    path = f"/bytes/{size}"
    job_id = await driver.submit(
        "pipeline", payload={"url": f"{origin.base}{path}", "fail_transcode": 2}
    )
    worker = ConveyorWorker(
        settings, connect(settings), queue=driver.queue, burst=True, handle_signals=False
    )
    await worker.async_run()
    await worker.close()

    job = await driver.producer.get(driver.queue, job_id)
    assert job is not None and job.status is JobStatus.SUCCEEDED and job.attempt == 3, job
    assert origin.paths.count(path) == 1  # downloaded once, for three attempts
    body = body_of(size)
    assert job.result["sha256"] == hashlib.sha256(body).hexdigest()
    artifacts = {a.name: a for a in job.artifacts}
    assert set(artifacts) == {"source", "transcoded"}  # the restored one is recorded too
    store = storage_for(s3_server)
    try:
        stored = b"".join([chunk async for chunk in store.read(artifacts["transcoded"].key)])
    finally:
        store.close()
    assert stored == body.upper()
    assert artifacts["transcoded"].sha256 == hashlib.sha256(body.upper()).hexdigest()
    steps = [
        (e.attempt, e.data["step"], e.data["state"])
        for e in await driver.producer.events(driver.queue, job_id)
        if e.event.value == "job.step"
    ]
    for attempt in (2, 3):
        assert (attempt, "download", "restored") in steps
        assert (attempt, "checksum", "restored") in steps
    assert [(s.name, s.attempt) for s in job.steps] == [
        ("download", 1),
        ("checksum", 1),
        ("transcode", 3),
    ]
