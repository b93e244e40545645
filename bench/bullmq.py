"""Conveyor beside BullMQ (Node), the issue's reference: the same no-op drain.

    .venv/bin/python -m bench.bullmq [--jobs 20000] [--rounds 3] [--phases drain,enqueue]

Needs `node` and `npm` on the PATH; installs BullMQ's pinned version into
`bench/bullmq/node_modules` on first use (`npm ci`, from the npm registry). Each round starts
a fresh redis-server per system (AOF on, as `conveyor run` runs it) and measures both the
same way as `bench.engine`: fill the queue, one worker (concurrency 200) drains it, rate
from the jobs' own start and finish times. Like BullMQ, Conveyor's consumer then writes no
log line per job; `--job-logs` turns its INFO line per job back on. Prints one line per
round (with BullMQ's pickup latency; `bench.engine` gives Conveyor's) and a last line with
the medians:
`conveyor_jobs_per_s=N bullmq_jobs_per_s=M ratio=R`.

The enqueue phase (`--enqueue-jobs`, 20,000) times putting jobs in, each round on fresh
servers: BullMQ's `queue.add` one by one (one in flight) and `addBulk` of 1,000 a call
(`bullmq/enqueue.cjs`), beside Conveyor's `POST /v1/jobs` one by one (wrk, one connection,
as `bench.http_submit`), `POST /v1/jobs/bulk` of 1,000 jobs a request (one at a time, on
one gateway process as `conveyor gateway` runs it) and `Producer.submit_many` of 1,000
(no HTTP). Bulks also go two at a time: two `addBulk` calls in flight, and two bulk
requests in flight from wrk (5 s). Last line: `bullmq_add_per_s=… bullmq_addbulk_per_s=…
bullmq_addbulk2_per_s=… conveyor_http_one_per_s=… conveyor_http_bulk_per_s=…
conveyor_http_bulk2_per_s=… conveyor_submit_many_per_s=…` (medians).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.engine import conveyor_throughput
from conveyor.embedded_redis import EmbeddedRedis

HERE = Path(__file__).resolve().parent / "bullmq"


def ensure_bullmq() -> str:
    """The `node` to run with; BullMQ installed beside the script."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise SystemExit("bench.bullmq needs node and npm on the PATH")
    if not (HERE / "node_modules" / "bullmq").is_dir():  # the versions package-lock.json pins
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=HERE, check=True)
    return node


def bullmq_round(node: str, jobs: int, data_dir: Path) -> str:
    with EmbeddedRedis(data_dir) as server:
        env = {**os.environ, "BENCH_REDIS_PORT": str(server.port), "BENCH_JOBS": str(jobs)}
        done = subprocess.run(
            [node, "noop.cjs"], cwd=HERE, env=env, check=True, capture_output=True, text=True
        )
    return done.stdout.strip().splitlines()[-1]


async def conveyor_round(jobs: int, data_dir: Path, job_logs: bool) -> float:
    with EmbeddedRedis(data_dir / "redis") as server:
        return await conveyor_throughput(server.url, jobs, 1, data_dir, job_logs=job_logs)


def bullmq_enqueue(node: str, jobs: int, data_dir: Path) -> dict[str, float]:
    with EmbeddedRedis(data_dir) as server:
        env = {**os.environ, "BENCH_REDIS_PORT": str(server.port), "BENCH_JOBS": str(jobs)}
        done = subprocess.run(
            [node, "enqueue.cjs"], cwd=HERE, env=env, check=True, capture_output=True, text=True
        )
    line = done.stdout.strip().splitlines()[-1]
    names = ("bullmq_add_per_s", "bullmq_addbulk_per_s", "bullmq_addbulk2_per_s")
    return {name: field(line, name) for name in names}


async def conveyor_enqueue(jobs: int, data_dir: Path) -> dict[str, float]:
    import httpx

    from bench.http_submit import API_KEY, QUEUE, ensure_wrk, gateway, wrk_run
    from producer import Producer
    from producer.connection import redis_from_url
    from schemas.models import SubmitRequest
    from schemas.settings import Settings

    batch = 1000
    body = json.dumps({"jobs": [{"type": "noop", "payload": {"n": 1}}] * batch}).encode()
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    with gateway(data_dir, as_deployed=True) as gw:
        one = wrk_run(ensure_wrk(), gw, 1, 4).rps
        async with httpx.AsyncClient(base_url=gw.url, headers=headers, timeout=60) as http:
            await http.post("/v1/jobs/bulk", content=body)  # warm-up
            started = time.perf_counter()
            for _ in range(jobs // batch):
                answer = await http.post("/v1/jobs/bulk", content=body)
                if answer.status_code != 202:
                    raise RuntimeError(f"bulk answered {answer.status_code}: {answer.text[:200]}")
            http_bulk = jobs // batch * batch / (time.perf_counter() - started)
        settings = Settings(redis_url=gw.redis_url, queues=[QUEUE])
        redis = redis_from_url(gw.redis_url)
        producer = Producer(redis, settings)
        requests = [SubmitRequest(type="noop", payload={"n": 1}, queue=QUEUE)] * batch
        started = time.perf_counter()
        for _ in range(jobs // batch):
            await producer.submit_many(requests, tenant="bench")
        many = jobs // batch * batch / (time.perf_counter() - started)
        await redis.aclose()
    # Two requests in flight, as addBulk's two calls: Redis runs one request's calls while
    # the gateway reads and validates the other (one in flight is latency-bound, the gateway
    # busy about half the time). On a gateway and Redis of its own: its 5 s add some 150,000
    # jobs, which would weigh on whatever came after, and 60,000 before it cost it 5-10%.
    with gateway(data_dir / "two", as_deployed=True) as gw:
        http_bulk2 = wrk_run(ensure_wrk(), gw, 2, 5, bulk=batch).rps * batch
    return {
        "conveyor_http_one_per_s": one,
        "conveyor_http_bulk_per_s": http_bulk,
        "conveyor_http_bulk2_per_s": http_bulk2,
        "conveyor_submit_many_per_s": many,
    }


def field(line: str, name: str) -> float:
    return float(dict(item.split("=") for item in line.split())[name])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--job-logs", action="store_true", help="Conveyor logs every job (INFO)")
    parser.add_argument("--phases", default="drain,enqueue", help="drain, enqueue or both")
    parser.add_argument("--enqueue-jobs", type=int, default=20_000)
    args = parser.parse_args()
    node = ensure_bullmq()
    phases = set(args.phases.split(","))
    if "drain" in phases:
        await drain(node, args)
    if "enqueue" in phases:
        rates: dict[str, list[float]] = {}
        for n in range(args.rounds):
            with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as tmp:
                found = bullmq_enqueue(node, args.enqueue_jobs, Path(tmp) / "bullmq")
                found |= await conveyor_enqueue(args.enqueue_jobs, Path(tmp) / "conveyor")
            for name, rate in found.items():
                rates.setdefault(name, []).append(rate)
            print(f"round={n + 1} " + " ".join(f"{k}={v:.0f}" for k, v in found.items()))
        print(" ".join(f"{k}={statistics.median(v):.0f}" for k, v in rates.items()), flush=True)


async def drain(node: str, args: argparse.Namespace) -> None:
    ours, theirs = [], []
    for n in range(args.rounds):  # alternate, so drift on a shared machine hits both
        with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as tmp:
            line = bullmq_round(node, args.jobs, Path(tmp) / "bullmq")
            rate = await conveyor_round(args.jobs, Path(tmp) / "conveyor", args.job_logs)
        theirs.append(field(line, "bullmq_jobs_per_s"))
        ours.append(rate)
        print(f"round={n + 1} conveyor_jobs_per_s={rate:.0f} {line}", flush=True)
    conveyor, bullmq = statistics.median(ours), statistics.median(theirs)
    print(
        f"conveyor_jobs_per_s={conveyor:.0f} bullmq_jobs_per_s={bullmq:.0f} "
        f"ratio={conveyor / bullmq:.2f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
