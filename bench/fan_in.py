"""A fan-in: one parent with 10,000 no-op children, beside the same 10,000 jobs without one.

    .venv/bin/python -m bench.fan_in [--children 10000] [--consumers 2]

Each side has its own fresh redis-server (AOF on, as `conveyor run` runs it) and its own
consumer processes on one queue (concurrency 200 each, no per-job log line), started and
seen alive before anything is submitted, so the jobs run while they are being submitted:

- flow: `Producer.submit` of a `noop` parent with `--children` `noop` children (the parent,
  then its children in one pipeline). The HTTP API caps a parent at 1,000 children and a
  flow at 10,000 jobs (schemas/models.py); the Producer checks neither, so the request is
  built with `SubmitRequest.model_construct`, which skips the model's validation;
- plain: `Producer.submit_many` of as many `noop` jobs (one pipeline).

Times are the jobs' own, from the queue's events stream (Redis's clock) and, for the
submit, this process's clock (the same host's). `submit_s`: the submit call;
`submit_to_parent_start_s`: from its start to the parent's `job.started`;
`children_jobs_per_s`: children over first child start to last child end (the same span
gives `plain_jobs_per_s`); `ratio`: the first over the second; `fan_in_ms`: the last
child's end to the parent's start, the time to carry the children's `child_ended` tasks
still queued then. Prints a line per side, then one line:
`children=… submit_s=… submit_to_parent_start_s=… children_jobs_per_s=… plain_jobs_per_s=…
ratio=…`.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis

from bench.drain import consumer
from bench.engine import drain_span, drain_times, wait_consumers
from conveyor.embedded_redis import EmbeddedRedis
from conveyor.process import ManagedProcess
from producer import Producer
from schemas import QueueKeys, Settings, SubmitRequest
from schemas.events import EventType
from schemas.status import TERMINAL, JobStatus

QUEUE = "fan-in"
DEADLINE_S = 600.0


@dataclass(frozen=True, slots=True)
class FlowRun:
    submit_s: float
    submit_to_parent_start_s: float
    children_jobs_per_s: float
    fan_in_ms: float


@dataclass(frozen=True, slots=True)
class PlainRun:
    submit_s: float
    jobs_per_s: float


class Side:
    """One side of the comparison: a fresh redis-server, its store, its consumers."""

    def __init__(self, data_dir: Path, consumers: int) -> None:
        self.data_dir = data_dir
        self.consumers = consumers
        self.server = EmbeddedRedis(data_dir / "redis")
        self.processes: list[ManagedProcess] = []

    async def __aenter__(self) -> Producer:
        url = self.server.start().url
        self.redis = aioredis.Redis.from_url(url, decode_responses=True)
        producer = Producer(self.redis, Settings(redis_url=url, queues=[QUEUE]))
        try:
            await producer.ensure_group(QUEUE)
            for i in range(self.consumers):
                self.processes.append(
                    consumer(url, QUEUE, self.data_dir, name=f"consumer-{i}", burst=False)
                )
            await wait_consumers(self.redis, QueueKeys(QUEUE), self.consumers)
        except BaseException:
            await self.__aexit__()
            raise
        return producer

    async def __aexit__(self, *_: object) -> None:
        for process in self.processes:
            process.stop()
        await self.redis.aclose()
        self.server.stop()


async def until(done: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not await done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} after {DEADLINE_S:.0f}s")
        await asyncio.sleep(0.2)


async def flow(children: int, consumers: int, data_dir: Path) -> FlowRun:
    async with Side(data_dir, consumers) as producer:
        request = SubmitRequest.model_construct(
            type="noop",
            queue=QUEUE,
            children=[SubmitRequest(type="noop") for _ in range(children)],
        )
        started = time.time()
        parent_id = (await producer.submit(request)).job_id
        submit_s = time.time() - started

        async def parent_ended() -> bool:
            job = await producer.get(QUEUE, parent_id)
            return job is not None and job.status in TERMINAL

        await until(parent_ended, "the parent had not ended")
        parent = await producer.get(QUEUE, parent_id)
        assert parent is not None and parent.status == JobStatus.SUCCEEDED, parent
        events = await producer.events(QUEUE, parent_id)
        parent_start = next(e.ts for e in events if e.event == EventType.STARTED) / 1000
        first_start, last_end = await drain_times(
            producer.redis, QueueKeys(QUEUE), children, skip_job=parent_id
        )
        return FlowRun(
            submit_s=submit_s,
            submit_to_parent_start_s=parent_start - started,
            children_jobs_per_s=children / (max(1, last_end - first_start) / 1000),
            fan_in_ms=parent_start * 1000 - last_end,
        )


async def plain(jobs: int, consumers: int, data_dir: Path) -> PlainRun:
    async with Side(data_dir, consumers) as producer:
        started = time.time()
        await producer.submit_many([SubmitRequest(type="noop", queue=QUEUE)] * jobs)
        submit_s = time.time() - started
        await until(lambda: producer.drained(QUEUE), "the queue was not drained")
        span_s = await drain_span(producer.redis, QueueKeys(QUEUE), jobs)
        return PlainRun(submit_s=submit_s, jobs_per_s=jobs / span_s)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--children", type=int, default=10_000)
    parser.add_argument("--consumers", type=int, default=2)
    args = parser.parse_args()
    n = args.children
    with tempfile.TemporaryDirectory(prefix="conveyor-fan-in-") as tmp:
        tree = await flow(n, args.consumers, Path(tmp) / "flow")
        print(
            f"flow children={n} consumers={args.consumers} submit_s={tree.submit_s:.2f} "
            f"submit_to_parent_start_s={tree.submit_to_parent_start_s:.2f} "
            f"children_jobs_per_s={tree.children_jobs_per_s:.0f} fan_in_ms={tree.fan_in_ms:.0f}",
            flush=True,
        )
        flat = await plain(n, args.consumers, Path(tmp) / "plain")
        print(
            f"plain jobs={n} consumers={args.consumers} submit_s={flat.submit_s:.2f} "
            f"jobs_per_s={flat.jobs_per_s:.0f}",
            flush=True,
        )
    print(
        f"children={n} submit_s={tree.submit_s:.2f} "
        f"submit_to_parent_start_s={tree.submit_to_parent_start_s:.2f} "
        f"children_jobs_per_s={tree.children_jobs_per_s:.0f} "
        f"plain_jobs_per_s={flat.jobs_per_s:.0f} "
        f"ratio={tree.children_jobs_per_s / flat.jobs_per_s:.2f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
