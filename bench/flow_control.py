"""What flow control costs a job, and how fairly tenants take turns.

    .venv/bin/python -m bench.flow_control [--jobs 2000] [--rate-jobs 10000] [--rounds 3]

Four drains of the same no-op (bench/flow_handlers.py), one consumer process at concurrency
200, the queue filled first, each on a fresh redis-server:

- `plain`: no gate, every job the default priority (the jobs stream's FIFO);
- `rated`: behind a rate limit keyed by a payload field that every job has its own of, so
  each start runs the whole rate gate (read its state, check its held list, write its next
  start) and none waits. One key for the whole type cannot do that: within one start script
  Redis's clock does not move, so a batch's second start is always early (see `rate_cap`);
- `capped`: `max_running` per tenant, far above the consumer's 200: each start takes a slot
  and each end gives it back;
- `mixed`: `plain` with every other job at priority 6, so the queue waits in its ordered
  backlog (zset) instead of the stream.

After each drain every job must have started once (attempt 1, no `message`) and never have
been held at a gate (no `held` field in its hash). Measured:

- Redis's instructions per job under callgrind, as `bench.redis_cost` counts them: the
  drain (counters zeroed once the queue is filled), and the submit before it;
- jobs/s of wall-clock drains, not under valgrind, the four alternating for `--rounds`
  rounds: first start to last success on Redis's clock (`bench.engine.drain_span`), medians;
- fairness: tenant A's 5,000 `sleepy` jobs (10 ms) queued, a consumer at concurrency 10
  started; once A's 21st has started, tenant B submits 10 no-ops. From the queue's events
  stream: how many of A's start between B's first `job.queued` and B's last `job.started`
  (the goal: fewer than 100), B's pickup, queued to started (Redis's clock), the longest
  time in which nothing started meanwhile, and Redis's slow log meanwhile (calls of 10 ms or
  more: moving the stream's leftovers to the ordered backlog is 1,000 entries a call);
- what a declared rate of 500/s gives a queue filled beforehand.

Needs `valgrind` (apt-get install valgrind). Prints one line per figure.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import redis.asyncio as aioredis

from bench.drain import check_drained, drain
from bench.engine import drain_span, percentile, spawn
from bench.redis_cost import CallgrindRedis
from conveyor.embedded_redis import EmbeddedRedis
from producer import Producer
from schemas import JobStatus, QueueKeys, Settings, SubmitRequest
from schemas.priority import DEFAULT_PRIORITY

HANDLERS = "bench.flow_handlers"
QUEUE = "flow"
# Every event of a run is kept: the fairness run writes about 15,000.
EVENTS_MAXLEN = 1_000_000


@dataclass(frozen=True, slots=True)
class Kind:
    """One drain: the job type and the priorities its jobs take in turn."""

    name: str
    job_type: str
    priorities: tuple[int, ...] = (DEFAULT_PRIORITY,)


KINDS = (
    Kind("plain", "plain"),
    Kind("rated", "rated"),
    Kind("capped", "capped"),
    Kind("mixed", "plain", (DEFAULT_PRIORITY, DEFAULT_PRIORITY + 1)),
)


def producer_for(redis: aioredis.Redis, url: str) -> Producer:
    return Producer(redis, Settings(redis_url=url, queues=[QUEUE], events_maxlen=EVENTS_MAXLEN))


async def fill(
    url: str, jobs: int, job_type: str, priorities: Sequence[int], tenant: str = ""
) -> list[str]:
    """`jobs` jobs, each with its own `k` (the rate gate's key), priorities in turn."""
    redis = aioredis.Redis.from_url(url, decode_responses=True)
    producer = producer_for(redis, url)
    await producer.ensure_group(QUEUE)
    ids: list[str] = []
    for start in range(0, jobs, 500):
        batch = [
            SubmitRequest(
                type=job_type,
                queue=QUEUE,
                payload={"k": i},
                priority=priorities[i % len(priorities)],
            )
            for i in range(start, min(start + 500, jobs))
        ]
        ids += await producer.submit_many(batch, tenant=tenant)
    await redis.aclose()
    return ids


async def check_never_held(url: str, ids: list[str]) -> None:
    """Each job started once and no gate ever held it: a job let go by a gate has `message`
    cleared when it starts, but its hash keeps the `held` field its hold wrote."""
    redis = aioredis.Redis.from_url(url, decode_responses=True)
    keys = QueueKeys(QUEUE)
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hmget(keys.job(job_id), "attempt", "message")
            pipe.hexists(keys.job(job_id), "held")
        replies = await pipe.execute()
    await redis.aclose()
    wrong = [
        job_id
        for job_id, (attempt, message), held in zip(ids, replies[::2], replies[1::2], strict=True)
        if attempt != "1" or message or held
    ]
    if wrong:
        raise RuntimeError(f"{len(wrong)} of {len(ids)} jobs were held or retried, e.g. {wrong[0]}")


async def redis_cost(kind: Kind, jobs: int, data_dir: Path) -> tuple[float, float]:
    """Instructions per job of (the submit, the drain), on a fresh Redis under callgrind."""
    with CallgrindRedis(data_dir / "redis") as server:
        server.zero()
        ids = await fill(server.url, jobs, kind.job_type, kind.priorities)
        submitted = server.instructions()
        server.zero()
        await drain(server.url, QUEUE, data_dir, name=f"cost-{kind.name}", handlers=HANDLERS)
        drained = server.instructions()
        await check_drained(server.url, QUEUE)
        await check_never_held(server.url, ids)
        return submitted / jobs, drained / jobs


async def throughput(kind: Kind, jobs: int, data_dir: Path) -> float:
    """Jobs/s of a drain: first start to last success, on Redis's clock."""
    with EmbeddedRedis(data_dir / "redis") as server:
        ids = await fill(server.url, jobs, kind.job_type, kind.priorities)
        await drain(server.url, QUEUE, data_dir, name=f"rate-{kind.name}", handlers=HANDLERS)
        await check_drained(server.url, QUEUE)
        await check_never_held(server.url, ids)
        redis = aioredis.Redis.from_url(server.url, decode_responses=True)
        span = await drain_span(redis, QueueKeys(QUEUE), jobs)
        await redis.aclose()
        return jobs / span


@dataclass(frozen=True, slots=True)
class Fairness:
    a_starts_while_b_waited: int
    b_pickup_ms: list[int]
    # the longest time without any start while B waited: the queue's stream moving to the
    # ordered backlog (1,000 entries a take) starts nothing meanwhile
    start_gap_max_ms: int
    # Redis's slow log while B waited (calls of 10 ms or more): the count, the longest in ms
    slow_calls: int
    slowest_ms: float
    a_left_queued: int  # A's jobs still queued when B's last started: above 0, or it proves nothing


async def fairness(data_dir: Path, a_jobs: int = 5000, b_jobs: int = 10) -> Fairness:
    with EmbeddedRedis(data_dir / "redis") as server:
        url = server.url
        a = await fill(url, a_jobs, "sleepy", (DEFAULT_PRIORITY,), tenant="a")
        env = {"CONVEYOR_REDIS_URL": url, "CONVEYOR_QUEUES": QUEUE, "CONVEYOR_CONCURRENCY": "10",
               "CONVEYOR_LOG_LEVEL": "warning", "CONVEYOR_HANDLERS": HANDLERS,
               "CONVEYOR_EVENTS_MAXLEN": str(EVENTS_MAXLEN)}  # fmt: skip
        argv = [sys.executable, "-m", "conveyor.cli", "worker", "--queue", QUEUE]
        worker = spawn(argv, env, "fairness", data_dir)
        redis = aioredis.Redis.from_url(url, decode_responses=True)
        producer = producer_for(redis, url)
        try:
            await until_status(producer, a[20], JobStatus.QUEUED, "A's 21st to start")
            await redis.slowlog_reset()
            b = await producer.submit_many(
                [SubmitRequest(type="plain", queue=QUEUE) for _ in range(b_jobs)], tenant="b"
            )
            await until_status(producer, b[-1], JobStatus.QUEUED, "B's last to start")
            for job_id in b:
                await until_status(producer, job_id, JobStatus.QUEUED, "B's jobs to start")
            slow = [entry["duration"] for entry in await redis.slowlog_get(128)]
            a_left = sum(
                [
                    job is not None and job.status is JobStatus.QUEUED
                    for job in await asyncio.gather(*(producer.get(QUEUE, i) for i in a[-500:]))
                ]
            )
        finally:
            worker.stop()
        rows = await events(redis)
        await redis.aclose()
    b_ids = set(b)
    queued = {f["job_id"]: (i, int(f["ts"])) for i, f in enumerate(rows)
              if f["event"] == "job.queued" and f["job_id"] in b_ids}  # fmt: skip
    started = {f["job_id"]: (i, int(f["ts"])) for i, f in enumerate(rows)
               if f["event"] == "job.started" and f["job_id"] in b_ids}  # fmt: skip
    first = min(i for i, _ in queued.values())
    last = max(i for i, _ in started.values())
    a_between = sum(
        1 for f in rows[first:last] if f["event"] == "job.started" and f["tenant"] == "a"
    )
    pickup = [started[job_id][1] - queued[job_id][1] for job_id in b]
    starts = [int(f["ts"]) for f in rows[first : last + 1] if f["event"] == "job.started"]
    times = [int(rows[first]["ts"]), *starts]
    gap = max(later - earlier for earlier, later in pairwise(times))
    return Fairness(a_between, pickup, gap, len(slow), max(slow, default=0) / 1000, a_left)


async def until_status(
    producer: Producer, job_id: str, leaving: JobStatus, what: str, timeout_s: float = 60
) -> None:
    """Until the job's status is no longer `leaving`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = await producer.get(QUEUE, job_id)
        if job is not None and job.status is not leaving:
            return
        await asyncio.sleep(0.002)
    raise TimeoutError(f"waited {timeout_s:.0f}s for {what}")


async def events(redis: aioredis.Redis) -> list[dict[str, str]]:
    """The queue's whole events stream, in the order Redis wrote it."""
    rows: list[dict[str, str]] = []
    last = "-"
    while True:
        page = await redis.xrange(QueueKeys(QUEUE).events, last, "+", 10_000)
        if last != "-":
            page = page[1:]  # the entry `last` itself, read already
        if not page:
            return rows
        rows += [fields for _, fields in page]
        last = page[-1][0]


async def rate_cap(jobs: int, data_dir: Path) -> tuple[float, int]:
    """(starts/s, jobs ever held) of `rated500`, declared 500/s, its queue filled first."""
    with EmbeddedRedis(data_dir / "redis") as server:
        ids = await fill(server.url, jobs, "rated500", (DEFAULT_PRIORITY,))
        await drain(server.url, QUEUE, data_dir, name="rate-cap", handlers=HANDLERS)
        await check_drained(server.url, QUEUE)
        redis = aioredis.Redis.from_url(server.url, decode_responses=True)
        span = await drain_span(redis, QueueKeys(QUEUE), jobs)
        async with redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hexists(QueueKeys(QUEUE).job(job_id), "held")
            held = sum(await pipe.execute())
        await redis.aclose()
        return jobs / span, held


def figures(values: dict[str, float], unit: str, digits: int) -> str:
    """`plain_<unit>=… rated_<unit>=… …` and each kind's ratio to plain."""
    line = [f"{kind}_{unit}={value:.{digits}f}" for kind, value in values.items()]
    line += [f"{kind}_ratio={value / values['plain']:.2f}"
             for kind, value in values.items() if kind != "plain"]  # fmt: skip
    return " ".join(line)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per callgrind drain")
    parser.add_argument("--rate-jobs", type=int, default=10_000, help="jobs per timed drain")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate-cap-jobs", type=int, default=1000)
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("bench.flow_control needs valgrind (apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="conveyor-flow-") as tmp:
        data = Path(tmp)
        submit: dict[str, float] = {}
        drained: dict[str, float] = {}
        for kind in KINDS:
            submit[kind.name], drained[kind.name] = await redis_cost(
                kind, args.jobs, data / f"cost-{kind.name}"
            )
        print(figures({k: v / 1000 for k, v in drained.items()}, "kinstr_per_job", 0))
        submit_kinstr = {k: v / 1000 for k, v in submit.items()}
        print(figures(submit_kinstr, "submit_kinstr_per_job", 0), flush=True)
        rates: dict[str, list[float]] = {kind.name: [] for kind in KINDS}
        for r in range(args.rounds):
            for kind in KINDS:
                rate = await throughput(kind, args.rate_jobs, data / f"rate-{kind.name}-{r}")
                rates[kind.name].append(rate)
        print(" ".join(f"{name}_jobs_per_s_rounds={','.join(f'{v:.0f}' for v in values)}"
                       for name, values in rates.items()))  # fmt: skip
        medians = {name: statistics.median(values) for name, values in rates.items()}
        print(figures(medians, "jobs_per_s", 0), flush=True)
        fair = await fairness(data / "fairness")
        print(
            f"fairness_a_starts_while_b_waited={fair.a_starts_while_b_waited} "
            f"b_pickup_p50_ms={percentile([float(v) for v in fair.b_pickup_ms], 50):.0f} "
            f"b_pickup_max_ms={max(fair.b_pickup_ms)} "
            f"start_gap_max_ms={fair.start_gap_max_ms} "
            f"redis_calls_over_10ms={fair.slow_calls} longest_call_ms={fair.slowest_ms:.0f} "
            f"a_of_last_500_still_queued={fair.a_left_queued}",
            flush=True,
        )
        cap_rate, held = await rate_cap(args.rate_cap_jobs, data / "rate-cap")
        print(
            f"rate_limit_declared_per_s=500 achieved_per_s={cap_rate:.0f} "
            f"jobs_held={held} of {args.rate_cap_jobs}"
        )


if __name__ == "__main__":
    asyncio.run(main())
