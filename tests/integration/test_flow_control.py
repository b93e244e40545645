"""Flow control across workers: priorities, fairness between tenants, rate limits and caps
on how many run at once (DESIGN, "Flow control"). Outcomes are read from the queue's events
stream, in the order Redis wrote them: who started when, and how many ran at once."""

from __future__ import annotations

import os
import signal
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from consumers.worker import ConveyorWorker, connect
from conveyor.embedded_redis import EmbeddedRedis
from conveyor.process import ManagedProcess
from producer import Producer
from producer.producer import Early
from schemas import TERMINAL_EVENTS, JobStatus, Settings, SubmitRequest
from schemas.gates import Gate, gates_argument
from tests.integration.helpers import Driver, running, until, wait_for_event, wait_for_terminal

# Every event of these tests is kept: a 5,000-job backlog writes 15,000.
EVENTS_MAXLEN = 100_000


@dataclass(frozen=True)
class Event:
    event: str
    job_id: str
    tenant: str
    ts: int
    owner: str


async def history(redis: aioredis.Redis, producer: Producer, queue: str) -> list[Event]:
    rows = await redis.xrange(producer.keys(queue).events)
    return [Event(f["event"], f["job_id"], f["tenant"], int(f["ts"]), f["data"]) for _, f in rows]


def started(events: list[Event]) -> list[Event]:
    return [e for e in events if e.event == "job.started"]


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory(handlers="tests.handlers", events_maxlen=EVENTS_MAXLEN)


@pytest.fixture
def make_worker(settings: Settings, queue_name: str) -> Callable[..., ConveyorWorker]:
    def make(**kwargs: object) -> ConveyorWorker:
        return ConveyorWorker(
            settings,
            connect(settings),
            queue=queue_name,
            handle_signals=False,
            **kwargs,  # type: ignore[arg-type]
        )

    return make


def jobs(queue: str, count: int, job_type: str = "noop", **fields: object) -> list[SubmitRequest]:
    return [SubmitRequest(type=job_type, queue=queue, **fields) for _ in range(count)]


# --- priorities ---------------------------------------------------------------------------


@pytest.mark.parametrize("low", [1, 5], ids=["low-1", "default-5"])
async def test_higher_priorities_start_first_and_each_level_in_order(
    low: int,
    driver: Driver,
    producer: Producer,
    make_worker: Callable[..., ConveyorWorker],
) -> None:
    """500 low then 50 high on a paused queue, resumed with one worker: every high job starts
    before any low one, and each level in submit order. With `low` 5 the low jobs wait in the
    jobs stream until the first high one arrives; then they move to the ordered backlog."""
    q = driver.queue
    await producer.pause(q)
    lows = await producer.submit_many(jobs(q, 500, priority=low), tenant="t1")
    highs = await producer.submit_many(jobs(q, 50, priority=9), tenant="t1")
    async with running(make_worker()):
        await producer.resume(q)
        terminal = await wait_for_terminal(driver.redis, q, set(lows + highs), 60)
    assert terminal == {job_id: ["job.succeeded"] for job_id in lows + highs}
    order = [e.job_id for e in started(await history(driver.redis, producer, q))]
    assert order == highs + lows
    job = await producer.get(q, highs[0])
    assert job is not None and job.priority == 9 and job.attempt == 1


async def test_priority_is_refused_outside_0_to_9(driver: Driver) -> None:
    with pytest.raises(ValueError, match="priority"):
        SubmitRequest(type="noop", queue=driver.queue, priority=10)


# --- fairness between tenants -------------------------------------------------------------


async def test_a_tenant_with_5000_queued_does_not_starve_another(
    driver: Driver, producer: Producer, make_worker: Callable[..., ConveyorWorker]
) -> None:
    """Tenant A holds 5,000 queued jobs (in the jobs stream: it was alone); B's 10 all start
    before A starts 100 more, while the worker drains A's."""
    q = driver.queue
    a = await producer.submit_many(
        jobs(q, 5000, "sleep", payload={"seconds": 0.01, "steps": 1}), tenant="a"
    )
    async with running(make_worker(concurrency=10)):
        await wait_for_event(driver.redis, q, a[20], "job.started", 30)
        b = await producer.submit_many(jobs(q, 10, "noop"), tenant="b")
        await wait_for_terminal(driver.redis, q, set(b), 30)
    events = await history(driver.redis, producer, q)
    first_b = min(i for i, e in enumerate(events) if e.job_id == b[0] and e.event == "job.queued")
    b_starts = [i for i, e in enumerate(events) if e.job_id in b and e.event == "job.started"]
    assert len(b_starts) == 10
    a_between = [
        e for e in events[first_b : max(b_starts)] if e.tenant == "a" and e.event == "job.started"
    ]
    assert len(a_between) < 100, f"A started {len(a_between)} while B's 10 waited"


async def test_a_tenant_submitting_while_another_drains_is_served_in_turn(
    driver: Driver, producer: Producer, make_worker: Callable[..., ConveyorWorker]
) -> None:
    """B submits one job at a time while A's 5,000 drain: each starts before A starts 100
    more after its submit."""
    q = driver.queue
    a = await producer.submit_many(
        jobs(q, 5000, "sleep", payload={"seconds": 0.01, "steps": 1}), tenant="a"
    )
    b: list[str] = []
    async with running(make_worker(concurrency=10)):
        await wait_for_event(driver.redis, q, a[20], "job.started", 30)
        for _ in range(10):
            (job_id,) = await producer.submit_many(jobs(q, 1, "noop"), tenant="b")
            b.append(job_id)
            await wait_for_event(driver.redis, q, job_id, "job.started", 30)
        last = await producer.get(q, a[-1])
    assert last is not None and last.status is JobStatus.QUEUED, (
        "A's backlog drained before B was done: the test proved nothing"
    )
    events = await history(driver.redis, producer, q)
    for job_id in b:
        queued = next(
            i for i, e in enumerate(events) if e.job_id == job_id and e.event == "job.queued"
        )
        start = next(
            i for i, e in enumerate(events) if e.job_id == job_id and e.event == "job.started"
        )
        a_between = [
            e for e in events[queued:start] if e.tenant == "a" and e.event == "job.started"
        ]
        assert len(a_between) < 100, f"A started {len(a_between)} while {job_id} waited"


# --- rate limits ----------------------------------------------------------------------------


def most_in_a_window(times_ms: list[int], window_ms: int) -> int:
    """The most starts in any half-open window [t, t + window_ms)."""
    times = sorted(times_ms)
    most, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window_ms:
            j += 1
        most = max(most, i - j + 1)
    return most


def check_rate(starts: list[Event], per_s: int, over_s: int) -> None:
    times = sorted(e.ts for e in starts)
    assert most_in_a_window(times, 1000) <= per_s
    in_window = [t for t in times if t < times[0] + over_s * 1000]
    expected = per_s * over_s
    assert abs(len(in_window) - expected) <= expected / 10, len(in_window)


async def test_a_rate_limit_per_type_holds_across_three_workers(
    driver: Driver, producer: Producer, spawn_worker: Callable[..., ManagedProcess]
) -> None:
    """`rated` is 20/s: over three worker processes no second holds more than 20 starts,
    5 s hold 100 within 10%, and a job held back used no attempt and said why."""
    q = driver.queue
    ids = await producer.submit_many(jobs(q, 130, "rated"), tenant="t1")
    for i in range(3):
        spawn_worker(f"w{i}", CONVEYOR_EVENTS_MAXLEN=str(EVENTS_MAXLEN))

    async def one_says_why() -> bool:
        for job_id in reversed(ids):
            job = await producer.get(q, job_id)
            if job and job.status is JobStatus.QUEUED and job.message:
                assert job.message == "waiting for the rate limit: 20/s"
                return True
        return False

    await until(
        one_says_why,
        redis=driver.redis,
        stream=producer.keys(q).events,
        timeout_s=15,
        what="a held job's message",
    )
    terminal = await wait_for_terminal(driver.redis, q, set(ids), 30)
    assert terminal == {job_id: ["job.succeeded"] for job_id in ids}
    events = await history(driver.redis, producer, q)
    check_rate(started(events), per_s=20, over_s=5)
    for job_id in ids:
        job = await producer.get(q, job_id)
        assert job is not None and job.attempt == 1 and not job.message


async def test_a_rate_limit_per_tenant_holds_each_tenant_to_it(
    driver: Driver, producer: Producer, spawn_worker: Callable[..., ManagedProcess]
) -> None:
    q = driver.queue
    ids = await producer.submit_many(jobs(q, 130, "rated_per_tenant"), tenant="a")
    ids += await producer.submit_many(jobs(q, 130, "rated_per_tenant"), tenant="b")
    for i in range(3):
        spawn_worker(f"w{i}", CONVEYOR_EVENTS_MAXLEN=str(EVENTS_MAXLEN))
    terminal = await wait_for_terminal(driver.redis, q, set(ids), 40)
    assert terminal == {job_id: ["job.succeeded"] for job_id in ids}
    events = started(await history(driver.redis, producer, q))
    for tenant in ("a", "b"):
        check_rate([e for e in events if e.tenant == tenant], per_s=20, over_s=5)


# --- caps on how many run at once -------------------------------------------------------------


def most_running(events: list[Event]) -> dict[str, int]:
    """Per tenant, the most jobs running at once, replaying starts and ends in order."""
    now: dict[str, set[str]] = defaultdict(set)
    most: dict[str, int] = defaultdict(int)
    for e in events:
        if e.event in ("job.started", "job.reclaimed"):
            now[e.tenant].add(e.job_id)
        elif e.event in TERMINAL_EVENTS or e.event == "job.retrying":
            now[e.tenant].discard(e.job_id)
        most[e.tenant] = max(most[e.tenant], len(now[e.tenant]))
    return dict(most)


@pytest.mark.parametrize("fault", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "frozen"])
async def test_max_running_per_tenant_holds_when_a_worker_dies_with_a_slot(
    fault: signal.Signals,
    driver: Driver,
    producer: Producer,
    spawn_worker: Callable[..., ManagedProcess],
) -> None:
    """`capped`: at most 2 per tenant across three workers. One is SIGKILLed (or SIGSTOPped,
    and woken once all is done) while running a capped job: its slot comes back with the
    reclaim, never more than 2 run per tenant, and every job ends once."""
    q = driver.queue
    ids = []
    for tenant in ("a", "b"):
        ids += await producer.submit_many(
            jobs(q, 10, "capped", payload={"seconds": 0.4}), tenant=tenant
        )
    victim = spawn_worker("victim", CONVEYOR_EVENTS_MAXLEN=str(EVENTS_MAXLEN))

    async def victim_runs_one() -> bool:
        return any(
            e.event == "job.started" and f":{victim.pid}:" in e.owner
            for e in await history(driver.redis, producer, q)
        )

    await until(
        victim_runs_one,
        redis=driver.redis,
        stream=producer.keys(q).events,
        timeout_s=15,
        what="the victim's start",
    )
    os.kill(victim.pid, fault)
    for i in range(3):
        spawn_worker(f"w{i}", CONVEYOR_EVENTS_MAXLEN=str(EVENTS_MAXLEN))
    terminal = await wait_for_terminal(driver.redis, q, set(ids), 60)
    assert terminal == {job_id: ["job.succeeded"] for job_id in ids}
    if fault == signal.SIGSTOP:  # it wakes believing it holds its job and slot
        os.kill(victim.pid, signal.SIGCONT)
    victim.stop(grace_s=10)  # a woken one finishes (its writes fenced) first
    events = await history(driver.redis, producer, q)
    assert [e.job_id for e in events if e.event == "job.succeeded"].count(ids[0]) == 1
    assert sorted(e.job_id for e in events if e.event == "job.succeeded") == sorted(ids)
    assert any(e.event == "job.reclaimed" for e in events)
    assert most_running(events) == {"a": 2, "b": 2}
    keys = producer.keys(q)
    for tenant in ("a", "b"):
        assert await driver.redis.scard(keys.gate("run", "capped", tenant)) == 0


async def test_max_running_per_payload_field(
    driver: Driver, producer: Producer, make_worker: Callable[..., ConveyorWorker]
) -> None:
    """`capped_per_account`: one at a time per `payload.account`, accounts side by side."""
    q = driver.queue
    ids = []
    for account in ("x", "y"):
        ids += await producer.submit_many(
            jobs(q, 4, "capped_per_account", payload={"seconds": 0.1, "account": account}),
            tenant="t1",
        )
    async with running(make_worker(concurrency=8)):
        await wait_for_terminal(driver.redis, q, set(ids), 30)
    events = await history(driver.redis, producer, q)
    running_now: dict[str, set[str]] = defaultdict(set)
    account = {job_id: ("x" if i < 4 else "y") for i, job_id in enumerate(ids)}
    most = 0
    both = False
    for e in events:
        if e.event == "job.started":
            running_now[account[e.job_id]].add(e.job_id)
        elif e.event in TERMINAL_EVENTS:
            running_now[account[e.job_id]].discard(e.job_id)
        most = max(most, *(len(s) for s in running_now.values()), 0)
        both = both or all(running_now[a] for a in ("x", "y"))
    assert most == 1 and both


# --- under faults ---------------------------------------------------------------------------


async def test_held_and_ordered_jobs_survive_a_redis_crash(
    fresh_redis: Callable[..., EmbeddedRedis],
    settings_factory: Callable[..., Settings],
    queue_name: str,
    spawn_worker: Callable[..., ManagedProcess],
) -> None:
    """Redis dies (SIGKILL) and comes back from its AOF while jobs wait in the ordered
    backlog and at rate gates, and some wait at their consumer for their turn: every job
    still ends once, and no tenant's second holds more than its rate, across the crash."""
    server = fresh_redis(appendfsync="always")
    settings = settings_factory(redis_url=server.url, events_maxlen=EVENTS_MAXLEN)
    redis = aioredis.Redis.from_url(server.url, decode_responses=True)
    producer = Producer(redis, settings)
    rated: dict[str, list[str]] = {}
    urgent: list[str] = []
    try:
        for tenant in ("a", "b"):
            rated[tenant] = await producer.submit_many(
                jobs(queue_name, 40, "rated_per_tenant"), tenant=tenant
            )
            urgent += await producer.submit_many(
                jobs(queue_name, 5, "noop", priority=9), tenant=tenant
            )
        ids = {*rated["a"], *rated["b"], *urgent}
        env = {"CONVEYOR_REDIS_URL": server.url, "CONVEYOR_EVENTS_MAXLEN": str(EVENTS_MAXLEN)}
        for i in range(2):
            spawn_worker(f"w{i}", **env)
        await wait_for_terminal(redis, queue_name, set(rated["a"][:10]), 30)
        await redis.aclose()
        server.kill()
        server.start()
        redis = aioredis.Redis.from_url(server.url, decode_responses=True)
        producer = Producer(redis, settings)
        terminal = await wait_for_terminal(redis, queue_name, ids, 60)
        assert terminal == {job_id: ["job.succeeded"] for job_id in ids}
        starts = started(await history(redis, producer, queue_name))
        for tenant in ("a", "b"):
            times = [e.ts for e in starts if e.job_id in rated[tenant]]
            assert most_in_a_window(times, 1000) <= 20
        keys = producer.keys(queue_name)
        assert await redis.zcard(keys.backlog) == 0 and await redis.zcard(keys.gates) == 0
    finally:
        await redis.aclose()


async def test_a_backlog_whose_lead_was_lost_is_still_taken(
    driver: Driver, producer: Producer
) -> None:
    """`lead` says the backlog is in use; should it be lost (a Redis that restarted without
    its last writes), a take that finds the stream empty takes from the backlog again."""
    q = driver.queue
    await producer.ensure_group(q)
    first = await producer.submit_many(jobs(q, 2), tenant="a")
    second = await producer.submit_many(jobs(q, 2), tenant="b")  # the backlog, from here
    keys = producer.keys(q)
    assert (await producer.stats(q)).backlog == 2  # GET /v1/queues counts them as queued
    await driver.redis.delete(keys.lead)
    taken: list[str] = []
    for _ in range(4):
        taken += [d.job_id for d in (await producer.take(q, "c1", 10)).deliveries]
    assert sorted(taken) == sorted(first + second)


# --- gates at the script level: what a second review found -----------------------------------


def gated(**declared: object) -> str:
    return gates_argument({"noop": Gate.declare(**declared)})  # type: ignore[arg-type]


async def test_a_cap_lets_the_next_go_when_the_one_it_let_go_is_cancelled(
    driver: Driver, producer: Producer
) -> None:
    """max_running=1: J1 runs, J2 and J3 are held; J1's end lets J2 go, and J2 is cancelled
    before it starts. J3 must not wait forever for a slot nobody holds."""
    q, cap = driver.queue, gated(max_running=1)
    await producer.ensure_group(q)
    _, j2, j3 = await producer.submit_many(jobs(q, 3), tenant="t1")
    (first,) = (await producer.take(q, "c1", 1, gates=cap)).deliveries
    assert (await producer.take(q, "c1", 5, gates=cap)).held == 2
    assert await producer.succeed(first, {})
    await producer.cancel(q, j2)
    started = [d.job_id for d in (await producer.take(q, "c1", 5, gates=cap)).deliveries]
    assert started == [j3]


async def test_a_cap_and_a_rate_on_one_type_do_not_hold_each_other_forever(
    driver: Driver, producer: Producer
) -> None:
    """max_running=1 and 1/s: J2, let go by the cap, is held by the rate on its way; when
    the rate lets it go, the cap must still know it let it go, or both wait forever."""
    q, both = driver.queue, gated(max_running=1, rate_limit="1/s")
    await producer.ensure_group(q)
    _, j2, j3 = await producer.submit_many(jobs(q, 3), tenant="t1")
    (first,) = (await producer.take(q, "c1", 1, gates=both)).deliveries
    await producer.take(q, "c1", 5, gates=both)  # J2, J3 held by the cap
    assert await producer.succeed(first, {})  # lets J2 go, to meet the rate's 1 s
    assert (await producer.take(q, "c1", 5, gates=both)).held == 1  # held by the rate

    waiting: list[Early] = []  # let go for a turn that has not come yet: as a consumer does

    async def second_started() -> bool:
        await producer.promote(q)
        waiting.extend((await producer.take(q, "c1", 5, gates=both)).early)
        entries = [(early.entry_id, early.job_id) for early in waiting]
        waiting.clear()
        await producer.start(q, entries, "c1", gates=both, early=waiting)
        job = await producer.get(q, j2)
        return job is not None and job.status is JobStatus.RUNNING

    await until(
        second_started, redis=driver.redis, stream=producer.keys(q).events, timeout_s=10,
        what="J2's start", pace_ms=50,
    )  # fmt: skip
    job = await producer.get(q, j3)
    assert job is not None and job.status is JobStatus.QUEUED and "free slot" in (job.message or "")


async def test_an_entry_read_but_never_started_meets_its_gates_when_reclaimed(
    driver: Driver, producer: Producer
) -> None:
    """A consumer read J2's entry and died before starting it, while J1 holds the only
    slot: the reclaim queues J2 again rather than starting it past the cap."""
    q, cap = driver.queue, gated(max_running=1)
    await producer.ensure_group(q)
    _, j2 = await producer.submit_many(jobs(q, 2), tenant="t1")
    await producer.take(q, "c1", 1, gates=cap)
    assert [job_id for _, job_id in await producer.fetch(q, "c2", 1, 100)] == [j2]
    report = await producer.reclaim(q, "c3", min_idle_ms=0, max_deliveries=3, count=10, gates=cap)
    assert j2 not in {d.job_id for d in report.deliveries}
    job = await producer.get(q, j2)
    assert job is not None and job.status is JobStatus.QUEUED and job.attempt == 0


async def test_a_payload_value_cannot_name_another_gates_keys(
    driver: Driver, producer: Producer
) -> None:
    """`{"account": "x:held"}` once named account x's list of held jobs as its cap's set:
    the take failed WRONGTYPE with jobs of its batch already started."""
    q, cap = driver.queue, gated(max_running=1, concurrency_key="payload.account")
    await producer.ensure_group(q)
    await producer.submit_many(jobs(q, 2, payload={"account": "x"}), tenant="t1")
    await producer.take(q, "c1", 2, gates=cap)  # one runs, one is held
    tricky = await producer.submit_many(jobs(q, 1, payload={"account": "x:held"}), tenant="t1")
    taken = await producer.take(q, "c1", 5, gates=cap)
    assert [d.job_id for d in taken.deliveries] == tricky
