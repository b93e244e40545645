"""What Redis keeps per finished job during its retention period, for Conveyor and for
BullMQ, from `INFO memory` around the same no-op drain.

    .venv/bin/python -m bench.redis_memory [--jobs 20000]

Needs `node` and `npm` for BullMQ (as `bench.bullmq`). Each system gets its own fresh
redis-server, configured as `conveyor run` runs it. `used_memory` is read once the queue
exists and is empty, and again after `jobs` no-op jobs were submitted and drained by one
consumer; the difference over `jobs` is what each finished job keeps. Conveyor keeps every
job's snapshot and history for the retention period (seven days by default); BullMQ, by
default, keeps every completed job until it is removed. Besides the totals, each side's
keys are broken down with `MEMORY USAGE` (an estimate: for streams it comes out above
what `used_memory` moves by). Prints the breakdowns, then one line:
`conveyor_bytes_per_job=N bullmq_bytes_per_job=M ratio=R`, then the floor under Conveyor's
figure that its keys set: `job_stream_floor_bytes=N`, what Redis keeps for a stream with one
one-field entry and a TTL (the least a job's own events stream can cost, whatever it
holds), and `job_stream_bytes=M` for one holding a no-op job's three events as Conveyor
writes them; each the mean of `FLOOR_KEYS` such keys on the same Redis configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import tempfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import redis.asyncio as aioredis

from bench.bullmq import HERE as BULLMQ_DIR
from bench.bullmq import ensure_bullmq
from bench.drain import check_drained, drain, fill
from conveyor.embedded_redis import EmbeddedRedis
from producer import Producer
from schemas import Settings


async def used_memory(url: str) -> int:
    redis = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        # Freed memory is returned lazily (lazyfree, jemalloc's purge): let it settle.
        await asyncio.sleep(0.5)
        return int((await redis.info("memory"))["used_memory"])
    finally:
        await redis.aclose()


async def breakdown(url: str, kind: Callable[[str], str], jobs: int) -> dict[str, float]:
    """Bytes per job in each kind of key (`kind` names a key's), every key measured with
    `MEMORY USAGE ... SAMPLES 0` (all of a stream's nodes)."""
    redis = aioredis.Redis.from_url(url, decode_responses=True)
    per_job: dict[str, float] = defaultdict(float)
    try:
        keys = [key async for key in redis.scan_iter(count=1000)]
        for start in range(0, len(keys), 1000):
            async with redis.pipeline(transaction=False) as pipe:
                for key in keys[start : start + 1000]:
                    pipe.memory_usage(key, samples=0)
                sizes = await pipe.execute()
            for key, size in zip(keys[start : start + 1000], sizes, strict=True):
                per_job[kind(key)] += (size or 0) / jobs
    finally:
        await redis.aclose()
    return per_job


def conveyor_kind(key: str) -> str:
    if key.endswith("}:events"):
        return "queue events stream"
    if ":job:" in key:
        return "job events stream" if key.endswith(":events") else "job hash"
    return "other keys"


def bullmq_kind(key: str) -> str:
    name = key.rsplit(":", 1)[-1]
    if name.isdigit():
        return "job hash"
    return {"completed": "completed set", "events": "queue events stream"}.get(name, "other keys")


async def conveyor_memory(jobs: int, data_dir: Path) -> tuple[float, dict[str, float]]:
    with EmbeddedRedis(data_dir / "redis") as server:
        queue = "mem"
        redis = aioredis.Redis.from_url(server.url, decode_responses=True)
        await Producer(redis, Settings(redis_url=server.url, queues=[queue])).ensure_group(queue)
        await redis.aclose()
        before = await used_memory(server.url)
        await fill(server.url, queue, jobs, "noop", {})
        await drain(server.url, queue, data_dir, name="conveyor-memory")
        await check_drained(server.url, queue)
        after = await used_memory(server.url)
        return (after - before) / jobs, await breakdown(server.url, conveyor_kind, jobs)


def bullmq_drain(node: str, port: int, jobs: int) -> None:
    env = {**os.environ, "BENCH_REDIS_PORT": str(port), "BENCH_JOBS": str(jobs)}
    with subprocess.Popen(
        [node, "drain_on_cue.cjs"], cwd=BULLMQ_DIR, env=env, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    ) as run:  # fmt: skip
        assert run.stdin is not None and run.stdout is not None
        if run.stdout.readline().strip() != "filled":
            raise RuntimeError("BullMQ's fill did not finish")
        run.stdin.write("go\n")
        run.stdin.flush()
        if run.stdout.readline().strip() != "drained":
            raise RuntimeError("BullMQ's drain did not finish")


async def bullmq_memory(node: str, jobs: int, data_dir: Path) -> tuple[float, dict[str, float]]:
    with EmbeddedRedis(data_dir / "redis") as server:
        before = await used_memory(server.url)
        assert server.port is not None
        await asyncio.to_thread(bullmq_drain, node, server.port, jobs)
        after = await used_memory(server.url)
        return (after - before) / jobs, await breakdown(server.url, bullmq_kind, jobs)


FLOOR_KEYS = 2000


async def stream_floor(data_dir: Path) -> tuple[float, float]:
    """Bytes per key of `FLOOR_KEYS` streams with a TTL: holding one one-field entry, and
    holding a no-op job's three events (`job.queued`, `job.started`, `job.succeeded`, the
    fields a job's own events stream gives each)."""
    ts = "1796418245140"
    events = [
        {"event": "job.queued", "status": "queued", "attempt": "0", "ts": ts, "data": "{}"},
        {"event": "job.started", "status": "running", "attempt": "1", "ts": ts,
         "data": '{"owner":"vm:6341:071dcf"}'},
        {"event": "job.succeeded", "status": "succeeded", "attempt": "1", "ts": ts,
         "data": '{"result":{},"artifacts":[]}'},
    ]  # fmt: skip
    figures = []
    with EmbeddedRedis(data_dir / "redis") as server:
        redis = aioredis.Redis.from_url(server.url, decode_responses=True)
        # A first fill of a fresh Redis keeps ~40 B a key more than the same fill after it
        # (whichever comes first): a warm-up fill is measured and left out.
        for entries in (events, [{"e": "1"}], events):
            await redis.flushall()
            before = await used_memory(server.url)
            async with redis.pipeline(transaction=False) as pipe:
                for n in range(FLOOR_KEYS):
                    key = f"conveyor:{{mem}}:job:{n:032x}:events"
                    for fields in entries:
                        pipe.xadd(key, fields)  # type: ignore[arg-type]
                    pipe.pexpire(key, 7 * 86_400_000)
                await pipe.execute()
            figures.append((await used_memory(server.url) - before) / FLOOR_KEYS)
        await redis.aclose()
    return figures[1], figures[2]


def show(name: str, total: float, parts: dict[str, float]) -> None:
    keys = sum(parts.values())
    print(f"{name}: {total:.0f} B/job (used_memory), of which in its keys {keys:.0f}:")
    for kind, size in sorted(parts.items(), key=lambda part: -part[1]):
        print(f"  {kind:28s} {size:7.0f} B/job")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    args = parser.parse_args()
    node = ensure_bullmq()
    with tempfile.TemporaryDirectory(prefix="conveyor-memory-") as tmp:
        ours, our_parts = await conveyor_memory(args.jobs, Path(tmp) / "conveyor")
        theirs, their_parts = await bullmq_memory(node, args.jobs, Path(tmp) / "bullmq")
        floor, three_events = await stream_floor(Path(tmp) / "floor")
    show("conveyor", ours, our_parts)
    show("bullmq", theirs, their_parts)
    print(
        f"conveyor_bytes_per_job={ours:.0f} bullmq_bytes_per_job={theirs:.0f} "
        f"ratio={ours / theirs:.2f}"
    )
    print(f"job_stream_floor_bytes={floor:.0f} job_stream_bytes={three_events:.0f}")


if __name__ == "__main__":
    asyncio.run(main())
