"""What tracing costs a worker: its CPU time per no-op job in a burst drain, as it ships (no
tracer provider: no span made, no trace context read) and with opentelemetry-sdk's provider
installed (a span per attempt, exported to nowhere through the SDK's batch processor).

    .venv/bin/python -m bench.tracing [--jobs 20000] [--rounds 3]

Starts its own redis-server. Each round drains `jobs` and `jobs // 10` jobs with a fresh
worker process (concurrency 200, no per-job log line) and takes the difference of the
process's CPU time (user + system, from wait4), so start-up and imports cancel out. The
jobs of the traced drains are submitted with a traceparent, as a traced gateway's are.
Prints, per mode, the median of the rounds in microseconds per job.
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
from pathlib import Path

import redis.asyncio as aioredis

from conveyor.embedded_redis import EmbeddedRedis
from producer import Producer
from schemas import Settings, SubmitRequest

REPO = Path(__file__).resolve().parents[1]
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

# The worker of the traced mode: the SDK's provider, its batch processor, an exporter that
# drops what it is given, then `conveyor worker` as the command line runs it.
TRACED_WORKER = """
import sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

class Drop(SpanExporter):
    def export(self, spans):
        return SpanExportResult.SUCCESS

provider = TracerProvider()
provider.add_span_processor(BatchSpanProcessor(Drop()))
trace.set_tracer_provider(provider)
from conveyor.cli import entry_point
sys.argv = ["conveyor", *sys.argv[1:]]
entry_point()
"""


async def drain_cpu_s(url: str, jobs: int, traced: bool) -> float:
    """CPU seconds of one worker process that drains `jobs` no-op jobs."""
    queue = f"tracing-{time.time_ns()}"
    redis = aioredis.Redis.from_url(url, decode_responses=True)
    producer = Producer(redis, Settings(redis_url=url, queues=[queue]))
    await producer.ensure_group(queue)
    options = {"trace": TRACEPARENT} if traced else {}
    for start in range(0, jobs, 1000):
        batch = [SubmitRequest(type="noop", queue=queue) for _ in range(min(1000, jobs - start))]
        await producer.submit_many(batch, **options)
    await redis.aclose()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "OTEL_"))},
        "CONVEYOR_REDIS_URL": url,
        "CONVEYOR_QUEUES": queue,
        "CONVEYOR_CONCURRENCY": "200",
        "CONVEYOR_LOG_LEVEL": "warning",
    }
    head = ["-c", TRACED_WORKER] if traced else ["-m", "conveyor.cli"]
    argv = [sys.executable, *head, "worker", "--queue", queue, "--burst"]
    return await asyncio.to_thread(cpu_s_of, argv, env)


def cpu_s_of(argv: list[str], env: dict[str, str]) -> float:
    """Run a process to its end; its CPU seconds (wait4 reaps it with its own usage)."""
    child = subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"the worker exited with {child.returncode}")
    return usage.ru_utime + usage.ru_stime


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default="off,sdk", help="off, sdk or both [default: both]")
    args = parser.parse_args()
    small = args.jobs // 10
    results: dict[str, list[float]] = {mode: [] for mode in args.modes.split(",")}
    with (
        tempfile.TemporaryDirectory(prefix="conveyor-tracing-") as tmp,
        EmbeddedRedis(Path(tmp)) as server,
    ):
        for _ in range(args.rounds):
            for mode in results:  # interleaved, so a noisy moment hits both
                traced = mode == "sdk"
                big = await drain_cpu_s(server.url, args.jobs, traced)
                little = await drain_cpu_s(server.url, small, traced)
                results[mode].append((big - little) / (args.jobs - small) * 1e6)
    medians = " ".join(f"{mode}={statistics.median(us):.1f}" for mode, us in results.items())
    rounds = " ".join(f"{mode}={[round(x, 1) for x in us]}" for mode, us in results.items())
    print(f"worker_cpu_us_per_job {medians} (rounds: {rounds})")


if __name__ == "__main__":
    asyncio.run(main())
