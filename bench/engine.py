"""End-to-end no-op throughput and pickup latency: Conveyor beside arq 0.28, same Redis, same run.

    .venv/bin/python -m bench.engine [--jobs 20000] [--latency-jobs 300]

Starts its own redis-server (AOF on, as `conveyor run` does) on a free port. Throughput: the
queue is filled first, then consumer processes drain it; the rate is jobs over the span from
the first start to the last finish, read from the jobs' own timestamps (Redis's clock), so
process start-up is not counted for either system; Conveyor's consumers write no per-job log
line (`--job-logs` for one at INFO, the default outside benchmarks). Pickup latency: with
idle consumers running, jobs are submitted one at a time; latency is the start time minus
the submit time, both taken from Redis's clock.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis
from arq.connections import RedisSettings, create_pool
from arq.jobs import Job as ArqJob

from conveyor.embedded_redis import EmbeddedRedis
from conveyor.process import ManagedProcess
from producer import Producer
from schemas import QueueKeys, Settings, SubmitRequest

REPO = Path(__file__).resolve().parents[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def spawn(argv: list[str], env: dict[str, str], name: str, log_dir: Path) -> ManagedProcess:
    environ = {**{k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}, **env}
    return ManagedProcess(
        name, argv, env=environ, cwd=REPO, log_path=log_dir / f"{name}.log"
    ).start()


async def conveyor_throughput(
    url: str, jobs: int, consumers: int, log_dir: Path, *, job_logs: bool = False
) -> float:
    """Jobs per second of a drain. The consumers write no per-job log line unless `job_logs`
    (they do by default, at INFO): BullMQ, the reference, writes none, and a JSON line costs
    a no-op job's consumer more than the job itself."""
    queue = f"bench-{consumers}-{time.time_ns()}"
    settings = Settings(redis_url=url, queues=[queue])
    redis = aioredis.Redis.from_url(url, decode_responses=True)
    producer = Producer(redis, settings)
    await producer.ensure_group(queue)
    for start in range(0, jobs, 1000):
        batch = [SubmitRequest(type="noop", queue=queue) for _ in range(min(1000, jobs - start))]
        await producer.submit_many(batch)
    env = {
        "CONVEYOR_REDIS_URL": url,
        "CONVEYOR_QUEUES": queue,
        "CONVEYOR_CONCURRENCY": "200",
        "CONVEYOR_LOG_LEVEL": "info" if job_logs else "warning",
    }
    argv = [sys.executable, "-m", "conveyor.cli", "worker", "--queue", queue, "--burst"]
    procs = [spawn(argv, env, f"conveyor-{consumers}-{i}", log_dir) for i in range(consumers)]
    for proc in procs:
        assert proc.proc is not None
        await asyncio.to_thread(proc.proc.wait, 600)
    span = await drain_span(redis, QueueKeys(queue), jobs)
    await redis.aclose()
    return jobs / span


async def drain_span(
    redis: aioredis.Redis, keys: QueueKeys, jobs: int, *, skip_job: str | None = None
) -> float:
    """First job.started to last job.succeeded, from the events stream (Redis's clock); the
    events of `skip_job` (a flow's parent, beside its children) left out."""
    first_start, last_end = await drain_times(redis, keys, jobs, skip_job=skip_job)
    return max(1, last_end - first_start) / 1000


async def drain_times(
    redis: aioredis.Redis, keys: QueueKeys, jobs: int, *, skip_job: str | None = None
) -> tuple[int, int]:
    """(first job.started, last job.succeeded) in ms, as `drain_span` reads them."""
    first_start, last_end, ended = None, 0, 0
    last_id = "-"
    while True:
        rows = await redis.xrange(
            keys.events, f"({last_id}" if last_id != "-" else "-", "+", 10_000
        )
        if not rows:
            break
        for entry_id, fields in rows:
            last_id = entry_id
            if fields["job_id"] == skip_job:
                continue
            ts = int(fields["ts"])
            if fields["event"] == "job.started" and first_start is None:
                first_start = ts
            elif fields["event"] == "job.succeeded":
                last_end, ended = ts, ended + 1
    assert ended == jobs, f"only {ended} of {jobs} jobs succeeded"
    assert first_start is not None
    return first_start, last_end


async def conveyor_pickup(url: str, jobs: int, log_dir: Path) -> list[float]:
    queue = f"pickup-{time.time_ns()}"
    settings = Settings(redis_url=url, queues=[queue])
    redis = aioredis.Redis.from_url(url, decode_responses=True)
    producer = Producer(redis, settings)
    await producer.ensure_group(queue)
    env = {"CONVEYOR_REDIS_URL": url, "CONVEYOR_QUEUES": queue}
    argv = [sys.executable, "-m", "conveyor.cli", "worker", "--queue", queue]
    proc = spawn(argv, env, "conveyor-pickup", log_dir)
    keys = QueueKeys(queue)
    try:
        await wait_consumers(redis, keys)
        latencies: list[float] = []
        for _ in range(jobs):
            job_id = (await producer.submit(SubmitRequest(type="noop", queue=queue))).job_id
            while True:  # block on the job's own events until it started
                reply = await redis.xread({keys.job_events(job_id): "0"}, block=5000)
                events = [f for _, rows in reply or () for _, f in rows]
                started = [f for f in events if f["event"] != "job.queued"]
                if started:
                    queued_ts = int(events[0]["ts"])
                    latencies.append(int(started[0]["ts"]) - queued_ts)
                    break
            await asyncio.sleep(0.005)  # pacing between submissions, not synchronisation
        return latencies
    finally:
        proc.stop()
        await redis.aclose()


async def wait_consumers(redis: aioredis.Redis, keys: QueueKeys, count: int = 1) -> None:
    """Until `count` consumers have marked themselves alive on the queue."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if await redis.hlen(keys.consumer_seen()) >= count:  # type: ignore[misc]
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"fewer than {count} consumers started")


async def arq_throughput(url: str, jobs: int, consumers: int, log_dir: Path) -> float:
    pool = await create_pool(RedisSettings.from_dsn(url))  # arq's default queue, as its worker
    ids = []
    for start in range(0, jobs, 1000):
        batch = await asyncio.gather(
            *(pool.enqueue_job("noop") for _ in range(min(1000, jobs - start)))
        )
        ids += [job.job_id for job in batch if job is not None]
    env = {"BENCH_REDIS_URL": url, "BENCH_BURST": "1", "BENCH_MAX_JOBS": "200"}
    argv = [sys.executable, "-m", "arq", "bench.arq_noop.WorkerSettings", "--burst"]
    procs = [spawn(argv, {**env}, f"arq-{consumers}-{i}", log_dir) for i in range(consumers)]
    for proc in procs:
        assert proc.proc is not None
        await asyncio.to_thread(proc.proc.wait, 900)
    results = await asyncio.gather(*(ArqJob(i, pool).result_info() for i in ids))
    done = [r for r in results if r is not None and r.success]
    assert len(done) == jobs, f"arq finished {len(done)} of {jobs}"
    span = max(r.finish_time for r in done) - min(r.start_time for r in done)
    await pool.aclose()
    return jobs / span.total_seconds()


async def arq_pickup(url: str, jobs: int, log_dir: Path) -> list[float]:
    pool = await create_pool(RedisSettings.from_dsn(url))
    env = {"BENCH_REDIS_URL": url}
    proc = spawn(
        [sys.executable, "-m", "arq", "bench.arq_noop.WorkerSettings"], env, "arq-pickup", log_dir
    )
    try:
        latencies = []
        for _ in range(jobs):
            job = await pool.enqueue_job("noop")
            assert job is not None
            await job.result(timeout=30, poll_delay=0.01)
            info = await job.result_info()
            assert info is not None
            latencies.append((info.start_time - info.enqueue_time).total_seconds() * 1000)
        return latencies
    finally:
        proc.stop()
        await pool.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--latency-jobs", type=int, default=300)
    parser.add_argument("--arq-latency-jobs", type=int, default=40)
    parser.add_argument("--job-logs", action="store_true", help="consumers log every job (INFO)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as tmp:
        log_dir = Path(tmp)
        with EmbeddedRedis(log_dir / "redis") as server:
            url = server.url
            conveyor = {
                n: await conveyor_throughput(url, args.jobs, n, log_dir, job_logs=args.job_logs)
                for n in (1, 2)
            }
            for n, rate in conveyor.items():
                print(f"conveyor consumers={n} jobs={args.jobs} jobs_per_s={rate:.0f}", flush=True)
            arq_jobs = min(args.jobs, 10_000)
            arq = {n: await arq_throughput(url, arq_jobs, n, log_dir) for n in (1, 2)}
            for n, rate in arq.items():
                print(f"arq consumers={n} jobs={arq_jobs} jobs_per_s={rate:.0f}", flush=True)
            pickup = await conveyor_pickup(url, args.latency_jobs, log_dir)
            arq_pick = await arq_pickup(url, args.arq_latency_jobs, log_dir)
            print(
                f"pickup_ms conveyor p50={statistics.median(pickup):.1f} "
                f"p99={percentile(pickup, 99):.1f} (n={len(pickup)}); arq p50="
                f"{statistics.median(arq_pick):.1f} p99={percentile(arq_pick, 99):.1f} "
                f"(n={len(arq_pick)})"
            )
            print(
                f"conveyor_jobs_per_s={conveyor[1]:.0f} arq_jobs_per_s={arq[1]:.0f} "
                f"ratio={conveyor[1] / arq[1]:.1f} pickup_p99_ms={percentile(pickup, 99):.1f}"
            )


if __name__ == "__main__":
    asyncio.run(main())
