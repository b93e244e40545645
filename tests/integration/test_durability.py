"""Redis dies mid-run (SIGKILL) and comes back from its AOF: nothing accepted is lost, and the
consumer reconnects by itself."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import redis.asyncio as aioredis

from conveyor.embedded_redis import EmbeddedRedis
from conveyor.process import ManagedProcess
from producer import Producer
from schemas import JobStatus, Settings, SubmitRequest
from tests.integration.conftest import wait_for_terminal

REPO = Path(__file__).resolve().parents[2]


async def test_jobs_survive_a_redis_crash_with_aof_always(
    fresh_redis: Callable[..., EmbeddedRedis],
    settings_factory: Callable[..., Settings],
    queue_name: str,
    tmp_path: Path,
) -> None:
    server = fresh_redis(appendfsync="always")
    settings = settings_factory(redis_url=server.url)
    runs = tmp_path / "runs"
    client = aioredis.Redis.from_url(server.url, decode_responses=True)
    producer = Producer(client, settings)
    requests = [
        SubmitRequest(type="record", queue=queue_name, payload={"path": str(runs), "seconds": 0.4})
        for _ in range(40)
    ]
    job_ids = {(await producer.submit(r)).job_id for r in requests}  # each one a 202
    await client.aclose()

    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")},
        "CONVEYOR_REDIS_URL": server.url,
        "CONVEYOR_HANDLERS": "tests.handlers",
        "CONVEYOR_CONCURRENCY": "4",
        "CONVEYOR_VISIBILITY_TIMEOUT_S": "2",
        "CONVEYOR_RECLAIM_INTERVAL_S": "0.2",
    }
    argv = [sys.executable, "-m", "conveyor.cli", "worker", "--queue", queue_name]
    worker = ManagedProcess("worker", argv, env=env, cwd=REPO, log_path=tmp_path / "w.log")
    worker.start()
    try:
        client = aioredis.Redis.from_url(server.url, decode_responses=True)
        # Some finished, some running, most still queued: then the crash.
        await wait_for_terminal(client, queue_name, set(sorted(job_ids)[:3]), 30)
        await client.aclose()
        server.kill()
        server.start()

        client = aioredis.Redis.from_url(server.url, decode_responses=True)
        terminal = await wait_for_terminal(client, queue_name, job_ids, 60)
        assert worker.alive(), worker.log_tail()  # reconnected by itself, never restarted
        assert terminal == {job_id: ["job.succeeded"] for job_id in job_ids}
        producer = Producer(client, settings)
        for job_id in job_ids:
            job = await producer.get(queue_name, job_id)
            assert job is not None and job.status is JobStatus.SUCCEEDED
        await client.aclose()
    finally:
        worker.stop()
