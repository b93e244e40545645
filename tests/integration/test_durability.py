"""Redis dies mid-run (SIGKILL) and comes back from its AOF: nothing accepted is lost, and the
consumer and the gateway reconnect by themselves."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import redis.asyncio as aioredis

from conveyor.embedded_redis import EmbeddedRedis
from conveyor.process import ManagedProcess, free_port
from tests.fixtures.processes import REPO, conveyor_env, start_gateway, start_worker
from tests.integration.helpers import wait_for_terminal

AUTH = {"Authorization": "Bearer key-1"}


async def test_accepted_jobs_survive_a_redis_crash_with_aof_always(
    fresh_redis: Callable[..., EmbeddedRedis],
    queue_name: str,
    tmp_path: Path,
) -> None:
    server = fresh_redis(appendfsync="always")
    port = free_port()
    env = conveyor_env(
        CONVEYOR_REDIS_URL=server.url,
        CONVEYOR_QUEUES=queue_name,
        CONVEYOR_HANDLERS="tests.handlers",
        CONVEYOR_API_KEYS="key-1=t1",
        CONVEYOR_CONCURRENCY="4",
        CONVEYOR_VISIBILITY_TIMEOUT_S="2",
        CONVEYOR_RECLAIM_INTERVAL_S="0.2",
    )
    gateway = start_gateway(env, port=port, log_dir=tmp_path, cwd=REPO, deadline_s=30)
    worker: ManagedProcess | None = None
    runs = tmp_path / "runs"
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=AUTH) as http:
            job_ids = set()
            for _ in range(40):
                response = await http.post(
                    "/v1/jobs",
                    json={"type": "record", "payload": {"path": str(runs), "seconds": 0.4}},
                )
                assert response.status_code == 202, response.text
                job_ids.add(response.json()["id"])

            worker = start_worker(env, queue=queue_name, log_dir=tmp_path, cwd=REPO)
            client = aioredis.Redis.from_url(server.url, decode_responses=True)
            # Some finished, some running, most still queued: then the crash.
            await wait_for_terminal(client, queue_name, set(sorted(job_ids)[:3]), 30)
            await client.aclose()
            server.kill()
            server.start()

            client = aioredis.Redis.from_url(server.url, decode_responses=True)
            terminal = await wait_for_terminal(client, queue_name, job_ids, 60)
            await client.aclose()
            assert terminal == {job_id: ["job.succeeded"] for job_id in job_ids}
            # Neither process was restarted, and both work against the restarted Redis.
            assert worker.alive(), worker.log_tail()
            assert gateway.alive(), gateway.log_tail()
            for job_id in sorted(job_ids)[:5]:
                response = await http.get(f"/v1/jobs/{job_id}")
                assert response.status_code == 200 and response.json()["status"] == "succeeded"
            after = await http.post("/v1/jobs", json={"type": "noop"})
            assert after.status_code == 202
            client = aioredis.Redis.from_url(server.url, decode_responses=True)
            await wait_for_terminal(client, queue_name, {after.json()["id"]}, 15)
            await client.aclose()
            metrics = (await http.get("/metrics")).text
            assert f'conveyor_consumers_alive{{queue="{queue_name}"}} 1.0' in metrics
    finally:
        if worker is not None:
            worker.stop()
        gateway.stop()


async def test_a_bulk_cut_short_by_a_redis_crash_leaves_no_half_written_job(
    fresh_redis: Callable[..., EmbeddedRedis],
    queue_name: str,
    tmp_path: Path,
) -> None:
    """Bulks of 1,000 are posted back to back, and Redis is SIGKILLed once the second
    bulk's first calls have landed (the rest in flight), then restarted from its AOF.
    Every answer, and every item's, is a 202 or a 503 (the cut bulk's items answered before
    the crash keep their 202); every job a 202 named exists once; and every job Redis
    holds is whole: its hash, its `job.queued` in its own stream and the queue's under the
    same id, and its entry in the jobs stream. A bulk's calls may land in part, but never
    a job in part."""
    server = fresh_redis(appendfsync="always")
    port = free_port()
    env = conveyor_env(
        CONVEYOR_REDIS_URL=server.url,
        CONVEYOR_QUEUES=queue_name,
        CONVEYOR_API_KEYS="key-1=t1",
        CONVEYOR_REDIS_TIMEOUT_S="2",
    )
    gateway = start_gateway(env, port=port, log_dir=tmp_path, cwd=REPO, deadline_s=30)
    bulk = {"jobs": [{"type": "noop", "payload": {"i": i}} for i in range(1000)]}
    answered = asyncio.Event()
    statuses: list[int] = []
    item_statuses: set[int] = set()
    accepted: list[str] = []

    async def post_bulks(http: httpx.AsyncClient) -> None:
        for _ in range(4):
            response = await http.post("/v1/jobs/bulk", json=bulk)
            statuses.append(response.status_code)
            if response.status_code == 202:
                results = response.json()["results"]
                item_statuses.update(item["status"] for item in results)
                accepted.extend(item["job"]["id"] for item in results if item["status"] == 202)
            answered.set()

    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers=AUTH, timeout=30
        ) as http:
            posting = asyncio.create_task(post_bulks(http))
            watcher = aioredis.Redis.from_url(server.url, decode_responses=True)
            async with asyncio.timeout(30):
                await answered.wait()
                # The second bulk's first calls have landed: the rest are on their way.
                while await watcher.xlen(f"conveyor:{{{queue_name}}}:jobs") <= 1000:
                    pass
            await watcher.aclose()
            server.kill()
            server.start()
            await asyncio.wait_for(posting, 60)
        assert set(statuses) <= {202, 503} and statuses[0] == 202, statuses
        assert item_statuses <= {202, 503}, item_statuses
        assert len(accepted) == len(set(accepted)) >= 1000 * (statuses.count(202) - 1)

        client = aioredis.Redis.from_url(server.url, decode_responses=True)
        prefix = f"conveyor:{{{queue_name}}}:job:"
        held = [key async for key in client.scan_iter(f"{prefix}*") if key.count(":") == 3]
        entries = {
            f["job_id"]: eid for eid, f in await client.xrange(f"conveyor:{{{queue_name}}}:jobs")
        }
        queue_events = {eid for eid, _ in await client.xrange(f"conveyor:{{{queue_name}}}:events")}
        for key in held:
            job = await client.hgetall(key)
            own = await client.xrange(f"{key}:events")
            assert [e["event"] for _, e in own] == ["job.queued"], key
            assert job["status"] == "queued" and job["last_event_id"] == own[0][0], key
            assert own[0][0] in queue_events and entries.get(job["id"]) == job["entry_id"], key
        assert set(accepted) <= {key.removeprefix(prefix) for key in held}
        await client.aclose()
    finally:
        gateway.stop()
