"""A worker's event-loop lag under a CPU-heavy mix, with the heavy work where it belongs and,
side by side, inline in `async def` handlers (the mistake the keeper and the stall watch are
for).

    .venv/bin/python -m bench.loop_lag [--jobs 60]

Each run drains the same mix on its own redis-server with one in-process burst worker: a third
CPU-bound (a prime sieve, ~0.1 s), a third blocking (`time.sleep(0.1)`), a third async
no-ops. "placed": the sieve in `ctx.run_process`, the sleep in a plain `def` handler; "inline":
both inside `async def`. The loop beats every 0.1 s (consumers/keeper.py); its lateness is the
lag. Prints one line per run: `mix=… jobs=… wall_s=… lag_mean_ms=… longest_stall_ms=…
stalls_over_50ms=…`, then `lag_ratio=` (inline over placed, mean lag).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

import redis.asyncio as aioredis

from consumers import metrics
from consumers.context import JobContext
from consumers.worker import ConveyorWorker, connect
from conveyor.embedded_redis import EmbeddedRedis
from examples.media import count_primes
from producer import Producer
from schemas import Settings, SubmitRequest

SIEVE = 400_000


async def cpu_placed(ctx: JobContext) -> int:
    return await ctx.run_process(count_primes, SIEVE)


async def cpu_inline(ctx: JobContext) -> int:
    return count_primes(SIEVE)


def block_placed(ctx: Any) -> None:
    time.sleep(0.1)


async def block_inline(ctx: JobContext) -> None:
    time.sleep(0.1)  # noqa: ASYNC251 - the mistake being measured


async def noop(ctx: JobContext) -> None:
    await asyncio.sleep(0)


class WorkerSettings:
    functions: ClassVar[list[Any]] = [cpu_placed, cpu_inline, block_placed, block_inline, noop]


def lag_so_far() -> tuple[int, float]:
    """(beats, summed lag s) of LOOP_LAG so far: a run's share is the difference."""
    samples = {s.name: s.value for s in metrics.LOOP_LAG.collect()[0].samples}
    return (
        int(samples["conveyor_worker_loop_lag_seconds_count"]),
        samples["conveyor_worker_loop_lag_seconds_sum"],
    )


async def run(url: str, mix: str, jobs: int) -> float:
    queue = f"lag-{mix}-{time.time_ns()}"
    settings = Settings(
        redis_url=url, queues=[queue], handlers="bench.loop_lag", loop_stall_warn_s=0.05
    )
    redis = aioredis.Redis.from_url(url, decode_responses=True)
    store = Producer(redis, settings)
    await store.ensure_group(queue)
    kinds = ["cpu_" + mix, "block_" + mix, "noop"]
    await store.submit_many([SubmitRequest(type=kinds[i % 3], queue=queue) for i in range(jobs)])
    await redis.aclose()
    before_count, before_sum = lag_so_far()
    worker = ConveyorWorker(
        settings, connect(settings), queue=queue, burst=True, handle_signals=False, concurrency=8
    )
    started = time.perf_counter()
    await worker.async_run()
    wall_s = time.perf_counter() - started
    await worker.close()
    count, total = lag_so_far()
    mean_s = (total - before_sum) / max(count - before_count, 1)
    print(
        f"mix={mix} jobs={jobs} wall_s={wall_s:.2f} lag_mean_ms={mean_s * 1000:.1f} "
        f"longest_stall_ms={worker.keeper.longest_stall_s * 1000:.0f} "
        f"stalls_over_50ms={worker.keeper.stalls}",
        flush=True,
    )
    return mean_s


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=60)
    args = parser.parse_args()
    logging.getLogger("conveyor").setLevel(logging.ERROR)  # the stall warnings: counted here
    with tempfile.TemporaryDirectory() as data, EmbeddedRedis(Path(data)) as server:
        placed = await run(server.url, "placed", args.jobs)
        inline = await run(server.url, "inline", args.jobs)
    print(f"lag_ratio={inline / max(placed, 1e-9):.1f}")


if __name__ == "__main__":
    asyncio.run(main())
