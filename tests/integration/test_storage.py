"""Streaming uploads into a real S3 (SeaweedFS started by the fixtures)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from consumers.storage import MIN_PART_SIZE, JobStorage, Storage, StorageError
from conveyor.embedded_s3 import EmbeddedS3
from conveyor.process import port_open
from tests.fixtures.s3 import storage_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


async def chunked(data: bytes, size: int = 100_003) -> AsyncIterator[bytes]:
    """`data` in chunks of an awkward size, so chunks straddle part boundaries."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def read_back(storage: Storage, key: str) -> bytes:
    async with httpx.AsyncClient() as client:
        response = await client.get(storage.presigned_get_url(key, 60))
        response.raise_for_status()
        return response.content


async def test_multipart_upload_reads_back_identical(storage: Storage, s3_queue: str) -> None:
    body = os.urandom(MIN_PART_SIZE * 7 // 2)  # 3.5 parts
    artifact = await storage.upload(s3_queue, "job1", "out.bin", chunked(body), "video/mp4")

    assert artifact.key == f"{s3_queue}/job1/out.bin"
    assert artifact.size == len(body)
    assert artifact.sha256 == hashlib.sha256(body).hexdigest()
    assert artifact.etag.endswith("-4")  # S3's multipart etag: four parts
    assert artifact.content_type == "video/mp4"
    back = await read_back(storage, artifact.key)
    assert hashlib.sha256(back).hexdigest() == artifact.sha256
    assert await storage.list_open_uploads(f"{s3_queue}/") == []


@pytest.mark.parametrize("size", [0, 1, MIN_PART_SIZE - 1, MIN_PART_SIZE, MIN_PART_SIZE + 1])
async def test_sizes_around_one_part(storage: Storage, s3_queue: str, size: int) -> None:
    body = os.urandom(size)
    artifact = await storage.upload(s3_queue, "job1", "x", chunked(body, 1 << 20), "a/b")
    assert (artifact.size, artifact.sha256) == (size, hashlib.sha256(body).hexdigest())
    assert await read_back(storage, artifact.key) == body


async def test_rerun_overwrites_and_job_storage_remembers(storage: Storage, s3_queue: str) -> None:
    job = JobStorage(storage, s3_queue, "job2")
    await job.upload("a.txt", chunked(b"first"))
    await job.upload("b.txt", chunked(b"other"), "text/plain")
    second = await job.upload("a.txt", chunked(b"second"))

    assert [a.name for a in job.artifacts] == ["b.txt", "a.txt"]
    assert job.artifacts[-1] == second
    assert await read_back(storage, second.key) == b"second"


async def test_cancel_mid_upload_aborts_it(storage: Storage, s3_queue: str) -> None:
    two_parts_read = asyncio.Event()

    async def stalls_after_two_parts() -> AsyncIterator[bytes]:
        yield os.urandom(2 * MIN_PART_SIZE + 10)
        two_parts_read.set()
        await asyncio.Event().wait()  # a download that stopped sending
        yield b""

    task = asyncio.create_task(
        storage.upload(s3_queue, "job3", "big", stalls_after_two_parts(), "a/b")
    )
    async with asyncio.timeout(20):
        await two_parts_read.wait()
        # The reader only asks for more once the upload exists and part 1 is on its way.
        assert await storage.list_open_uploads(f"{s3_queue}/job3/") != []
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await storage.list_open_uploads(f"{s3_queue}/") == []


async def test_cancel_while_s3_opens_the_upload_still_aborts_it(
    storage: Storage, s3_queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cancel lands after S3 has created the upload but before its id reaches us: the
    upload exists on the server though the coroutine never saw it."""
    loop = asyncio.get_running_loop()
    opened = asyncio.Event()
    release = threading.Event()
    create = storage._client._create_multipart_upload

    def create_then_hold(*args: Any) -> str:
        upload_id = create(*args)
        loop.call_soon_threadsafe(opened.set)
        release.wait(20)
        return upload_id

    monkeypatch.setattr(storage._client, "_create_multipart_upload", create_then_hold)
    body = os.urandom(MIN_PART_SIZE + 1)
    task = asyncio.create_task(storage.upload(s3_queue, "job5", "big", chunked(body), "a/b"))
    async with asyncio.timeout(20):
        await opened.wait()
        assert await storage.list_open_uploads(f"{s3_queue}/job5/") != []
        task.cancel()
        await asyncio.sleep(0)  # the cancel is delivered while the thread still holds the id
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await storage.list_open_uploads(f"{s3_queue}/") == []


async def test_a_failing_stream_aborts_the_upload(storage: Storage, s3_queue: str) -> None:
    async def breaks() -> AsyncIterator[bytes]:
        yield os.urandom(MIN_PART_SIZE + 1)
        raise ConnectionResetError("upstream went away")

    with pytest.raises(ConnectionResetError):  # the handler's error, not a StorageError
        await storage.upload(s3_queue, "job4", "big", breaks(), "a/b")
    assert await storage.list_open_uploads(f"{s3_queue}/") == []


async def test_s3_killed_mid_upload_fails_clearly_and_leaves_nothing_open(
    fresh_s3: Callable[[], EmbeddedS3], s3_queue: str
) -> None:
    server = fresh_s3()
    storage = storage_for(server, tries=3, backoff_s=0.1, connect_timeout_s=1, read_timeout_s=5)
    body = os.urandom(4 * MIN_PART_SIZE)

    async def kills_s3_halfway() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 1 << 20):
            if start == 2 * MIN_PART_SIZE + (1 << 20):  # part 2 sent or on its way
                server.kill()
            yield body[start : start + (1 << 20)]

    try:
        started = time.monotonic()
        with pytest.raises(StorageError, match="S3 could not"):
            async with asyncio.timeout(30):
                await storage.upload(s3_queue, "job5", "big", kills_s3_halfway(), "a/b")
        assert time.monotonic() - started < 20

        server.start()  # same data directory, same port
        # The abort could not reach a dead S3, so the upload is still open; the job's next
        # attempt at the same key clears what the failed one left, then succeeds.
        left = await storage.list_open_uploads(f"{s3_queue}/")
        assert [u.key for u in left] == [f"{s3_queue}/job5/big"]
        artifact = await storage.upload(s3_queue, "job5", "big", chunked(body), "a/b")
        assert artifact.sha256 == hashlib.sha256(body).hexdigest()
        assert await storage.list_open_uploads(f"{s3_queue}/") == []
    finally:
        storage.close()

    ports = [server.port, *server._ports.values()]
    server.stop()
    assert not server.alive()
    assert [p for p in ports if p is not None and port_open("127.0.0.1", p)] == []


async def test_abort_open_uploads_clears_a_prefix(storage: Storage, s3_queue: str) -> None:
    stalled = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield os.urandom(MIN_PART_SIZE + 1)
        stalled.set()  # by now the multipart upload has been created
        await asyncio.Event().wait()
        yield b""

    # What a worker that vanished mid-upload leaves behind, swept by prefix.
    task = asyncio.create_task(storage.upload(s3_queue, "job6", "x", stalls(), "a/b"))
    try:
        async with asyncio.timeout(20):
            await stalled.wait()
        assert await storage.abort_open_uploads(f"{s3_queue}/") == 1
        assert await storage.list_open_uploads(f"{s3_queue}/") == []
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


STREAM_IN_CHILD = textwrap.dedent(
    """
    import asyncio, json, sys
    from consumers.storage import Storage

    endpoint, access, secret, bucket, queue, total_mib = sys.argv[1:]
    block = bytes(range(256)) * 256  # 64 KiB, generated on the fly, never accumulated

    async def body():
        for _ in range(int(total_mib) * 16):
            yield block

    async def main():
        storage = Storage(endpoint=endpoint, access_key=access, secret_key=secret,
                          bucket=bucket, part_size=8 * 1024 * 1024)
        artifact = await storage.upload(queue, "big", "stream.bin", body(), "a/b")
        storage.close()
        return artifact

    artifact = asyncio.run(main())
    status = open("/proc/self/status").read()
    hwm_kib = int(next(l for l in status.splitlines() if l.startswith("VmHWM")).split()[1])
    print(json.dumps({"size": artifact.size, "sha256": artifact.sha256,
                      "peak_rss_mib": hwm_kib / 1024}))
    """
)


def test_streaming_512_mib_keeps_peak_rss_low(s3_server: EmbeddedS3, s3_queue: str) -> None:
    total_mib = 512
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            STREAM_IN_CHILD,
            s3_server.endpoint,
            s3_server.access_key,
            s3_server.secret_key,
            s3_server.bucket,
            s3_queue,
            str(total_mib),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])

    expected = hashlib.sha256()
    block = bytes(range(256)) * 256
    for _ in range(total_mib * 16):
        expected.update(block)
    assert report["size"] == total_mib * 1024 * 1024
    assert report["sha256"] == expected.hexdigest()
    assert report["peak_rss_mib"] < 200, report
