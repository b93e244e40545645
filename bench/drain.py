"""A queue filled beforehand, drained by one burst consumer process: what `bench.redis_cost`
and `bench.steps` measure around (Redis's instructions, the consumer's CPU)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench.engine import spawn
from conveyor.process import ManagedProcess
from producer import Producer
from schemas import Settings, SubmitRequest

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Drained:
    cpu_s: float  # the consumer process's user + system CPU, its start-up included
    wall_s: float  # from its start to its exit


async def fill(url: str, queue: str, jobs: int, job_type: str, payload: dict[str, Any]) -> None:
    redis = aioredis.Redis.from_url(url, decode_responses=True)
    producer = Producer(redis, Settings(redis_url=url, queues=[queue]))
    await producer.ensure_group(queue)
    for start in range(0, jobs, 500):
        batch = [
            SubmitRequest(type=job_type, queue=queue, payload=payload)
            for _ in range(min(500, jobs - start))
        ]
        await producer.submit_many(batch)
    await redis.aclose()


async def drain(
    url: str, queue: str, log_dir: Path, *, name: str, handlers: str | None = None
) -> Drained:
    """Run one `consumer` in burst mode until it exits. Its CPU is read from /proc once it
    has exited and before it is reaped: a zombie keeps its times."""
    started = time.perf_counter()
    worker = consumer(url, queue, log_dir, name=name, handlers=handlers, burst=True)
    cpu_s = await run_to_exit(worker, timeout_s=1800)
    return Drained(cpu_s, time.perf_counter() - started)


async def run_to_exit(worker: ManagedProcess, timeout_s: float) -> float:
    """Wait for a started burst consumer to exit and return its CPU seconds, read from
    /proc before it is reaped (a zombie keeps its times); stopped in any case, and an
    error with its log's tail if it exited with a failure."""
    try:
        await _exited(worker.pid, timeout_s=timeout_s)
        cpu_s = cpu_seconds(worker.pid)
        assert worker.proc is not None
        code = worker.proc.wait()
    finally:
        worker.stop()
    if code != 0:
        raise RuntimeError(f"consumer {worker.name} exited with {code}:\n{worker.log_tail()}")
    return cpu_s


def consumer(
    url: str, queue: str, log_dir: Path, *, name: str, handlers: str | None = None, burst: bool
) -> ManagedProcess:
    """One consumer process (`conveyor worker`) as the benchmarks run it: concurrency 200,
    no per-job log line (as `bench.engine`)."""
    env = {"CONVEYOR_REDIS_URL": url, "CONVEYOR_QUEUES": queue, "CONVEYOR_CONCURRENCY": "200",
           "CONVEYOR_LOG_LEVEL": "warning"}  # fmt: skip
    if handlers:
        env["CONVEYOR_HANDLERS"] = handlers
    argv = [sys.executable, "-m", "conveyor.cli", "worker", "--queue", queue]
    return spawn([*argv, "--burst"] if burst else argv, env, name, log_dir)


async def check_drained(url: str, queue: str) -> None:
    """Every job succeeded: the jobs stream is empty (an ended job's entry is deleted) and
    none was dead-lettered or left delayed for a retry."""
    redis = aioredis.Redis.from_url(url, decode_responses=True)
    stats = await Producer(redis, Settings(redis_url=url, queues=[queue])).stats(queue)
    await redis.aclose()
    if stats.length or stats.dead or stats.delayed:
        raise RuntimeError(f"the drain of {queue} left {stats}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (proc(5): fields 14 and 15, after the parenthesised name)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


async def _exited(pid: int, timeout_s: float) -> None:
    """Until the child exits, leaving it unreaped (WNOWAIT)."""
    deadline = time.monotonic() + timeout_s
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is None:  # noqa: ASYNC222 - WNOHANG: it never waits
        if time.monotonic() > deadline:
            raise TimeoutError(f"the consumer (pid {pid}) ran past {timeout_s:.0f}s")
        await asyncio.sleep(0.05)
