"""Conveyor beside BullMQ (Node), the issue's reference: the same no-op drain.

    .venv/bin/python -m bench.bullmq [--jobs 20000] [--rounds 3]

Needs `node` and `npm` on the PATH; installs BullMQ's pinned version into
`bench/bullmq/node_modules` on first use (`npm ci`, from the npm registry). Each round starts
a fresh redis-server per system (AOF on, as `conveyor run` runs it) and measures both the
same way as `bench.engine`: fill the queue, one worker (concurrency 200) drains it, rate
from the jobs' own start and finish times. Like BullMQ, Conveyor's consumer then writes no
log line per job; `--job-logs` turns its INFO line per job back on. Prints one line per
round (with BullMQ's pickup latency; `bench.engine` gives Conveyor's) and a last line with
the medians:
`conveyor_jobs_per_s=N bullmq_jobs_per_s=M ratio=R`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
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


def field(line: str, name: str) -> float:
    return float(dict(item.split("=") for item in line.split())[name])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--job-logs", action="store_true", help="Conveyor logs every job (INFO)")
    args = parser.parse_args()
    node = ensure_bullmq()
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
