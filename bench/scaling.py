"""The scaling curve: no-op throughput with 1, 2 and 4 consumer processes on one Redis.

    .venv/bin/python -m bench.scaling [--jobs 20000]

Each run is `bench.engine.conveyor_throughput` (fill a fresh queue, then let N burst-mode
consumer processes drain it, writing no per-job log line; the rate is read from the jobs' own
timestamps). Alongside, a sampler reads Redis's `INFO` and `/proc` every 0.25 s, and each line
says, over the drain:

    redis_cpu      Redis's main thread, in cores (it runs every command on that one thread)
    consumers_cpu  the consumer processes together, in cores
    host_cpu       the whole machine, busy cores of all it has
    others_cpu     what other programs used meanwhile (a benchmark on a shared machine says so)
    lag_unknown    samples in which `XINFO GROUPS` reported no lag although entries were
                   waiting, of all such samples (see README, "Scaling out")
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as aioredis

from bench.engine import conveyor_throughput
from conveyor.embedded_redis import EmbeddedRedis
from schemas import CONSUMER_GROUP, QueueKeys

COUNTS = (1, 2, 4)
SAMPLE_S = 0.25


@dataclass
class Sample:
    server_us: int  # Redis's clock, the same clock as the events' `ts`
    redis_cpu_s: float  # the main thread's user + sys time
    redis_all_cpu_s: float  # all of redis-server's threads (AOF fsync, lazy free...)
    consumers_cpu_s: float  # user + sys time of our child processes but redis-server
    own_cpu_s: float  # this process
    host_busy: int  # jiffies the machine spent not idle
    host_total: int


@dataclass
class Sampler:
    redis: aioredis.Redis
    consumers: int
    redis_pid: int
    samples: list[Sample] = field(default_factory=list)
    lag_checks: int = 0
    lag_unknown: int = 0

    async def run(self) -> None:
        await asyncio.gather(self._sample_cpu(), self._watch_lag())

    async def _sample_cpu(self) -> None:
        while True:
            self.samples.append(await self._sample())
            await asyncio.sleep(SAMPLE_S)

    async def _watch_lag(self) -> None:
        jobs_key = None
        while jobs_key is None:
            jobs_key = await find_key(self.redis, QueueKeys(f"bench-{self.consumers}-*").jobs)
            await asyncio.sleep(SAMPLE_S)
        while True:
            await self._check_lag(jobs_key)
            await asyncio.sleep(SAMPLE_S)

    async def _sample(self) -> Sample:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.info("server")
            pipe.info("cpu")
            server, cpu = await pipe.execute()
        busy, total = host_jiffies()
        return Sample(
            server_us=int(server["server_time_usec"]),
            redis_cpu_s=float(cpu["used_cpu_user_main_thread"])
            + float(cpu["used_cpu_sys_main_thread"]),
            redis_all_cpu_s=float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
            consumers_cpu_s=children_cpu_s(exclude=self.redis_pid),
            own_cpu_s=time.process_time(),
            host_busy=busy,
            host_total=total,
        )

    async def _check_lag(self, jobs_key: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:  # one consistent view
            pipe.xinfo_groups(jobs_key)
            pipe.xlen(jobs_key)
            with contextlib.suppress(aioredis.ResponseError):  # no group before a consumer
                groups, length = await pipe.execute()
                group = next((g for g in groups if g["name"] == CONSUMER_GROUP), None)
                if group is not None and int(length) > int(group["pending"]):  # entries wait
                    self.lag_checks += 1
                    self.lag_unknown += group.get("lag") is None


async def find_key(redis: aioredis.Redis, pattern: str) -> str | None:
    """The stream matching `pattern` (`conveyor_throughput` names its queue
    `bench-<consumers>-<ns>`); braces are not glob syntax."""
    async for key in redis.scan_iter(match=pattern, count=10_000, _type="stream"):
        return str(key)
    return None


def children_cpu_s(exclude: int) -> float:
    """CPU seconds (user + sys) of this process's live children; 0 off Linux."""
    pid = os.getpid()
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0.0
    total = 0
    for child in children:
        if int(child) == exclude:
            continue
        with contextlib.suppress(OSError):  # it just exited
            stat = Path(f"/proc/{child}/stat").read_text()
            utime, stime = stat.rsplit(")", 1)[1].split()[11:13]
            total += int(utime) + int(stime)
    return total / os.sysconf("SC_CLK_TCK")


def host_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine since boot; (0, 0) off Linux."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0, 0
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


async def drain_window(redis: aioredis.Redis, consumers: int) -> tuple[int, int]:
    """(first job.started, last job.succeeded) in ms of the run with `consumers` consumers."""
    key = await find_key(redis, QueueKeys(f"bench-{consumers}-*").events)
    assert key is not None
    last_ts = int((await redis.xrevrange(key, count=1))[0][1]["ts"])
    after = "-"
    while rows := await redis.xrange(key, after, "+", count=10_000):
        for _, fields in rows:
            if fields["event"] == "job.started":
                return int(fields["ts"]), last_ts
        after = f"({rows[-1][0]}"
    raise AssertionError("no job.started event")


def within(samples: list[Sample], start_ms: int, end_ms: int) -> tuple[Sample, Sample]:
    inside = [s for s in samples if start_ms * 1000 <= s.server_us <= end_ms * 1000]
    if len(inside) < 2:
        raise AssertionError("the run was too short to sample: use more --jobs")
    return inside[0], inside[-1]


async def measure(
    server: EmbeddedRedis, jobs: int, consumers: int, log_dir: Path
) -> tuple[float, str]:
    url = server.url
    redis = aioredis.Redis.from_url(url, decode_responses=True)
    sampler = Sampler(redis, consumers, server.pid)
    task = asyncio.create_task(sampler.run())
    try:
        rate = await conveyor_throughput(url, jobs, consumers, log_dir)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    first, last = within(sampler.samples, *await drain_window(redis, consumers))
    await redis.aclose()
    wall_s = (last.server_us - first.server_us) / 1e6
    redis_cpu = (last.redis_cpu_s - first.redis_cpu_s) / wall_s
    consumers_cpu = (last.consumers_cpu_s - first.consumers_cpu_s) / wall_s
    ours = (
        consumers_cpu
        + (last.redis_all_cpu_s - first.redis_all_cpu_s + last.own_cpu_s - first.own_cpu_s) / wall_s
    )
    cores = os.cpu_count() or 1
    host_total = last.host_total - first.host_total
    host = (last.host_busy - first.host_busy) / host_total * cores if host_total else 0.0
    unknown = f"{sampler.lag_unknown}/{sampler.lag_checks}"
    line = (
        f"consumers={consumers} jobs={jobs} jobs_per_s={rate:.0f} redis_cpu={redis_cpu:.2f}"
        f" redis_cpu_us_per_job={redis_cpu * 1e6 / rate:.0f} consumers_cpu={consumers_cpu:.2f}"
        f" host_cpu={host:.2f}/{cores} others_cpu={max(0.0, host - ours):.2f}"
        f" lag_unknown={unknown}"
    )
    return rate, line


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    args = parser.parse_args()
    rates: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="conveyor-scaling-") as tmp:
        log_dir = Path(tmp)
        with EmbeddedRedis(log_dir / "redis") as server:
            for n in COUNTS:
                started = time.monotonic()
                rates[n], line = await measure(server, args.jobs, n, log_dir)
                print(f"{line} run_s={time.monotonic() - started:.0f}", flush=True)
    print("scaling jobs_per_s " + " ".join(f"{n}={rates[n]:.0f}" for n in COUNTS))


if __name__ == "__main__":
    asyncio.run(main())
