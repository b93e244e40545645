"""The consumer process's CPU per drained job: what one `conveyor worker` spends on each no-op
job, beside the same drain run from other source trees (an A/B of two commits), same run.

    .venv/bin/python -m bench.consumer_cpu [--trees DIR,DIR] [--jobs 20000] [--rounds 5]
                                           [--callgrind]

Wall-clock rates move a lot on a shared machine; the CPU a process was charged moves less,
though still 20-40% between runs of a busy 2-core machine (take medians of many rounds).
Each round, for each tree in turn (the order rotates between rounds): a fresh
redis-server (AOF on, as `conveyor run` runs it), the queue filled with `--jobs` no-op
jobs by that tree's own producer, then one consumer of that tree (burst mode, concurrency
200, no per-job log line, as `bench.bullmq`) drains it. Its CPU (user + system, from /proc)
less what the same consumer spends on an empty queue (start-up and exit, measured the same
round) is the drain's; divided by the jobs, the CPU per job. A tree is a checkout (`git
worktree add --detach DIR COMMIT`); its code runs on this interpreter, the tree first on
`sys.path`. Prints one line per run and, last, per tree the medians:
`tree=DIR consumer_us_per_job=N redis_us_per_job=M jobs_per_s=R cpu_ratio_to_first=X`.

`--callgrind` runs each consumer under valgrind's callgrind and counts the instructions it
executed instead (`consumer_kinstr_per_job`): about 50 times slower (use `--jobs 3000`), but
the same figure on a busy machine as on a quiet one, within a per cent between runs. The
consumer then runs far slower than Redis, so its batches are fuller than
in a real drain: the figure is for comparing trees, not a drain's cost.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis

from bench.drain import run_to_exit
from bench.engine import drain_span
from conveyor.embedded_redis import EmbeddedRedis
from conveyor.process import ManagedProcess
from schemas import QueueKeys

REPO = Path(__file__).resolve().parents[1]

# Run with the tree as the working directory, so its packages come first on `sys.path`.
FILL = """
import asyncio, sys
import redis.asyncio as aioredis
from producer import Producer
from schemas import Settings, SubmitRequest

async def fill(url, queue, jobs):
    redis = aioredis.Redis.from_url(url, decode_responses=True)
    producer = Producer(redis, Settings(redis_url=url, queues=[queue]))
    await producer.ensure_group(queue)
    for start in range(0, jobs, 1000):
        n = min(1000, jobs - start)
        await producer.submit_many([SubmitRequest(type="noop", queue=queue)] * n)
    await redis.aclose()

asyncio.run(fill(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


@dataclass(frozen=True, slots=True)
class Run:
    consumer_cpu_s: float
    redis_cpu_s: float
    jobs_per_s: float


def environment(url: str, queue: str, block_ms: int) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    return {**environ, "CONVEYOR_REDIS_URL": url, "CONVEYOR_QUEUES": queue,
            "CONVEYOR_CONCURRENCY": "200", "CONVEYOR_LOG_LEVEL": "warning",
            "CONVEYOR_BLOCK_MS": str(block_ms)}  # fmt: skip


async def consume(
    tree: Path, url: str, queue: str, log_dir: Path, block_ms: int, callgrind: bool = False
) -> float:
    """CPU seconds of one burst consumer of `tree` until it exits; with `callgrind`, the
    instructions it executed instead (valgrind's callgrind, every thread)."""
    argv = [sys.executable, "-m", "conveyor.cli", "worker", "--queue", queue, "--burst"]
    out = log_dir / f"{queue}.callgrind"
    if callgrind:
        argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *argv]
    env = environment(url, queue, block_ms)
    worker = ManagedProcess(queue, argv, env=env, cwd=tree, log_path=log_dir / f"{queue}.log")
    worker.start()
    cpu_s = await run_to_exit(worker, timeout_s=600)
    if callgrind:
        return instructions(out)
    return cpu_s


def instructions(path: Path) -> float:
    """The total of a callgrind output file (its `summary:` line)."""
    for line in path.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return float(line.split()[1])
    raise RuntimeError(f"no summary in {path}")


async def redis_cpu_s(redis: aioredis.Redis) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def one_run(tree: Path, jobs: int, tmp: Path, callgrind: bool) -> Run:
    with EmbeddedRedis(tmp / "redis") as server:
        redis = aioredis.Redis.from_url(server.url, decode_responses=True)
        # Start-up and exit alone: an empty queue, with a short blocking read.
        idle = await consume(tree, server.url, f"idle-{time.time_ns()}", tmp, 50, callgrind)
        queue = f"cpu-{time.time_ns()}"
        fill = [sys.executable, "-c", FILL, server.url, queue, str(jobs)]
        await asyncio.to_thread(subprocess.run, fill, cwd=tree, check=True)
        before = await redis_cpu_s(redis)
        busy = await consume(tree, server.url, queue, tmp, 50, callgrind)
        redis_s = await redis_cpu_s(redis) - before
        span = await drain_span(redis, QueueKeys(queue), jobs)
        await redis.aclose()
    return Run(busy - idle, redis_s, jobs / span)


def per_job(consumer: float, args: argparse.Namespace) -> str:
    if args.callgrind:
        return f"consumer_kinstr_per_job={consumer / args.jobs / 1000:.1f}"
    return f"consumer_us_per_job={consumer / args.jobs * 1e6:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trees", default=str(REPO), help="comma-separated source trees")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--callgrind", action="store_true", help="count instructions (valgrind), not CPU time"
    )
    args = parser.parse_args()
    asyncio.run(compare([Path(t).resolve() for t in args.trees.split(",")], args))


async def compare(trees: list[Path], args: argparse.Namespace) -> None:
    runs: dict[Path, list[Run]] = {tree: [] for tree in trees}
    for n in range(args.rounds):
        order = trees[n % len(trees) :] + trees[: n % len(trees)]  # drift hits every tree
        for tree in order:
            with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as tmp:
                run = await one_run(tree, args.jobs, Path(tmp), args.callgrind)
            runs[tree].append(run)
            print(
                f"round={n + 1} tree={tree} {per_job(run.consumer_cpu_s, args)} "
                f"redis_us_per_job={run.redis_cpu_s / args.jobs * 1e6:.1f} "
                f"jobs_per_s={run.jobs_per_s:.0f}",
                flush=True,
            )
    first = statistics.median(r.consumer_cpu_s for r in runs[trees[0]])
    for tree, done in runs.items():
        cpu = statistics.median(r.consumer_cpu_s for r in done)
        redis_s = statistics.median(r.redis_cpu_s for r in done)
        rate = statistics.median(r.jobs_per_s for r in done)
        print(
            f"tree={tree} {per_job(cpu, args)} "
            f"redis_us_per_job={redis_s / args.jobs * 1e6:.1f} jobs_per_s={rate:.0f} "
            f"cpu_ratio_to_first={cpu / first:.3f}"
        )


if __name__ == "__main__":
    main()
