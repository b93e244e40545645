"""The state machine against a real Redis: every allowed transition is taken by a script,
every refused one is refused by Redis, and each write lands in hash, events and queue at once."""

from __future__ import annotations

import dataclasses
import itertools
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from producer import Lease, Producer
from producer.checks import note_stream_node_size, warn_if_evicting
from producer.producer import SCRIPT_BATCH, SUBMIT_BATCH
from producer.scripts import library_source
from schemas import CONSUMER_GROUP, TRANSITIONS, Event, JobStatus, Settings, SubmitRequest
from schemas.errors import JobNotFound, TransitionRefused
from tests.integration.helpers import Driver, wait_for_terminal

S = JobStatus

# The Lua table, queried through the same `allowed` every script uses.
ALLOWED_PROBE = library_source() + "\nreturn allowed(ARGV[5], ARGV[6]) and 1 or 0"


@pytest.mark.parametrize(("source", "target"), list(itertools.product(S, S)))
async def test_lua_table_matches_python(redis: aioredis.Redis, source: S, target: S) -> None:
    allowed = await redis.eval(ALLOWED_PROBE, 0, 1, 1, 1, 1, source.value, target.value)
    assert bool(allowed) == (target in TRANSITIONS[source])


async def test_an_illegal_transition_raises_inside_redis(redis: aioredis.Redis) -> None:
    probe = ALLOWED_PROBE.replace(
        "return allowed(ARGV[5], ARGV[6]) and 1 or 0", "check_transition(ARGV[5], ARGV[6])"
    )
    with pytest.raises(aioredis.ResponseError, match="ILLEGAL_TRANSITION succeeded -> running"):
        await redis.eval(probe, 0, 1, 1, 1, 1, "succeeded", "running")


async def test_submit_writes_hash_event_and_entry_together(
    driver: Driver, producer: Producer
) -> None:
    job_id = await driver.submit(payload={"x": 1})
    job = await producer.get(driver.queue, job_id)
    assert job is not None and job.status is S.QUEUED and job.payload == {"x": 1}
    events = await producer.events(driver.queue, job_id)
    assert [e.event.value for e in events] == ["job.queued"]
    assert job.last_event_id == events[0].id
    entries = await driver.deliver()
    assert [jid for _, jid in entries] == [job_id]
    queue_events = await driver.redis.xrange(producer.keys(driver.queue).events)
    assert [eid for eid, _ in queue_events] == [events[0].id]  # same id in both streams


async def test_scheduled_to_queued_by_promote(driver: Driver, producer: Producer) -> None:
    job_id = await driver.submit(delay_s=0.001)
    assert await driver.status(job_id) is S.SCHEDULED
    await driver.redis.zadd(producer.keys(driver.queue).delayed, {job_id: 0})  # due now
    moved, next_due = await producer.promote(driver.queue)
    assert (moved, next_due) == (1, None)
    assert await driver.status(job_id) is S.QUEUED
    assert await driver.event_types(job_id) == ["job.scheduled", "job.queued"]
    assert await producer.promote(driver.queue) == (0, None)  # never enqueued twice


async def test_queued_to_running_by_start(driver: Driver) -> None:
    delivery = await driver.running()
    assert delivery.attempt == 1
    assert await driver.status(delivery.job_id) is S.RUNNING
    assert await driver.event_types(delivery.job_id) == ["job.queued", "job.started"]


async def test_running_to_succeeded_ends_the_delivery(driver: Driver, producer: Producer) -> None:
    delivery = await driver.running()
    assert await producer.succeed(delivery, {"n": 1})
    job = await producer.get(driver.queue, delivery.job_id)
    assert job is not None and job.status is S.SUCCEEDED and job.result == {"n": 1}
    jobs_key = producer.keys(driver.queue).jobs
    assert await driver.redis.xlen(jobs_key) == 0
    assert (await driver.redis.xpending(jobs_key, "workers"))["pending"] == 0
    assert await driver.redis.ttl(producer.keys(driver.queue).job(delivery.job_id)) > 0


async def test_the_jobs_history_tells_what_the_queues_stream_told(
    driver: Driver, producer: Producer
) -> None:
    delivery = await driver.running()
    assert await producer.succeed(delivery, {"n": 1})
    keys = producer.keys(driver.queue)
    told = [
        Event.from_entry(entry_id, fields)
        for entry_id, fields in await driver.redis.xrange(keys.events)
        if fields["job_id"] == delivery.job_id
    ]
    assert [e.event.value for e in told] == ["job.queued", "job.started", "job.succeeded"]
    assert told[0].tenant == "t1" and told[0].job_type == "noop"
    assert await producer.events(driver.queue, delivery.job_id) == told
    # The job's own entries leave its identity to the key and the hash: none is stored twice.
    for _, fields in await driver.redis.xrange(keys.job_events(delivery.job_id)):
        assert sorted(fields) == ["attempt", "data", "event", "status", "ts"]


async def test_running_to_scheduled_on_retryable_error(driver: Driver, producer: Producer) -> None:
    delivery = await driver.running()
    outcome = await producer.fail(
        delivery, "flaky", retryable=True, backoff_ms=60_000, default_max_attempts=5
    )
    assert outcome == "retrying"
    assert await driver.status(delivery.job_id) is S.SCHEDULED
    assert await driver.redis.zscore(producer.keys(driver.queue).delayed, delivery.job_id)
    assert (await driver.event_types(delivery.job_id))[-1] == "job.retrying"


async def test_a_jobs_own_stream_stays_capped_however_much_it_reports(
    redis: aioredis.Redis, settings: Settings, queue_name: str
) -> None:
    producer = Producer(redis, settings.model_copy(update={"job_events_maxlen": 20}))
    driver = Driver(producer, redis, queue_name)
    delivery = await driver.running()
    for percent in range(500):
        assert await producer.progress(queue_name, delivery.job_id, delivery.attempt, percent / 5)
    assert await producer.succeed(delivery, {})
    # `~` trims whole stream nodes only, so the length stays within a node of the cap.
    length = await redis.xlen(producer.keys(queue_name).job_events(delivery.job_id))
    assert 20 <= length < 100
    assert (await driver.event_types(delivery.job_id))[-1] == "job.succeeded"


async def test_a_retry_starts_from_nothing_and_its_success_clears_the_error(
    driver: Driver, producer: Producer
) -> None:
    first = await driver.running()
    assert await producer.progress(driver.queue, first.job_id, first.attempt, 60, "encoding", "hi")
    await producer.fail(first, "flaky", retryable=True, backoff_ms=0, default_max_attempts=5)
    assert await producer.promote(driver.queue) == (1, None)
    entries = await driver.deliver()
    (second,) = await producer.start(driver.queue, entries, "c2")
    job = await producer.get(driver.queue, first.job_id)
    assert job is not None and job.attempt == second.attempt == first.attempt + 1
    assert (job.progress, job.stage, job.message, job.error) == (0, None, None, "flaky")
    assert await producer.succeed(second, {"n": 2})
    job = await producer.get(driver.queue, first.job_id)
    assert job is not None and (job.status, job.error, job.progress) == (S.SUCCEEDED, None, 100)


async def test_running_to_failed_dead_letters(driver: Driver, producer: Producer) -> None:
    delivery = await driver.running()
    outcome = await producer.fail(
        delivery, "broken", retryable=False, backoff_ms=0, default_max_attempts=5
    )
    assert outcome == "failed"
    job = await producer.get(driver.queue, delivery.job_id)
    assert job is not None and job.status is S.FAILED and job.error == "broken"
    dead = await driver.redis.xrange(producer.keys(driver.queue).dead)
    assert [fields["job_id"] for _, fields in dead] == [delivery.job_id]
    events = await producer.events(driver.queue, delivery.job_id)
    assert events[-1].event.value == "job.failed" and events[-1].data["error"] == "broken"


async def test_dead_letters_older_than_the_retention_are_trimmed(
    driver: Driver, producer: Producer, settings: Settings
) -> None:
    dead_key = producer.keys(driver.queue).dead
    now_ms = int(time.time() * 1000)
    expired = f"{now_ms - settings.job_retention_s * 1000 - 60_000}-0"
    kept = f"{now_ms - settings.job_retention_s * 1000 + 60_000}-0"
    for entry_id in (expired, kept):
        await driver.redis.xadd(dead_key, {"job_id": "old"}, id=entry_id)
    delivery = await driver.running()
    await producer.fail(delivery, "broken", retryable=False, backoff_ms=0, default_max_attempts=5)
    dead = await driver.redis.xrange(dead_key)
    assert [entry_id for entry_id, _ in dead][:1] == [kept]  # the one past retention is gone
    assert [fields["job_id"] for _, fields in dead] == ["old", delivery.job_id]


async def test_retry_budget_exhausted_fails(driver: Driver, producer: Producer) -> None:
    delivery = await driver.running(max_attempts=1)
    outcome = await producer.fail(
        delivery, "x", retryable=True, backoff_ms=0, default_max_attempts=9
    )
    assert outcome == "failed"


@pytest.mark.parametrize("status", [S.SCHEDULED, S.QUEUED])
async def test_cancel_before_running_is_immediate(
    driver: Driver, producer: Producer, status: S
) -> None:
    job_id = await driver.job_in(status)
    assert await producer.cancel(driver.queue, job_id) == "cancelled"
    assert await driver.status(job_id) is S.CANCELLED
    keys = producer.keys(driver.queue)
    assert await driver.redis.xlen(keys.jobs) == 0
    assert await driver.redis.zcard(keys.delayed) == 0


async def test_cancel_running_requests_then_worker_confirms(
    driver: Driver, producer: Producer
) -> None:
    delivery = await driver.running()
    assert await producer.cancel(driver.queue, delivery.job_id) == "requested"
    assert await producer.cancel(driver.queue, delivery.job_id) == "requested"  # idempotent
    assert await driver.status(delivery.job_id) is S.RUNNING
    assert await producer.cancelled(delivery, "cancelled by request")
    assert await driver.event_types(delivery.job_id) == [
        "job.queued",
        "job.started",
        "job.cancel_requested",
        "job.cancelled",
    ]


@pytest.mark.parametrize("status", [S.FAILED, S.CANCELLED])
async def test_manual_retry_requeues_with_a_fresh_budget(
    driver: Driver, producer: Producer, status: S
) -> None:
    job_id = await driver.job_in(status)
    assert await producer.retry(driver.queue, job_id) == "queued"
    job = await producer.get(driver.queue, job_id)
    assert job is not None and job.status is S.QUEUED and job.error is None
    assert await driver.redis.ttl(producer.keys(driver.queue).job(job_id)) == -1
    entries = await driver.deliver()
    (delivery,) = await producer.start(driver.queue, entries, "c2")
    assert delivery.attempt == 2  # the fencing token keeps growing


@pytest.mark.parametrize("status", [S.SCHEDULED, S.QUEUED, S.RUNNING, S.SUCCEEDED])
async def test_manual_retry_refused(driver: Driver, producer: Producer, status: S) -> None:
    job_id = await driver.job_in(status)
    with pytest.raises(TransitionRefused, match=status.value):
        await producer.retry(driver.queue, job_id)
    assert await driver.status(job_id) is status


@pytest.mark.parametrize("status", [S.SUCCEEDED, S.FAILED])
async def test_cancel_refused_once_ended(driver: Driver, producer: Producer, status: S) -> None:
    job_id = await driver.job_in(status)
    with pytest.raises(TransitionRefused):
        await producer.cancel(driver.queue, job_id)
    assert await driver.status(job_id) is status


async def test_cancelling_a_cancelled_job_again_answers_cancelled_and_writes_nothing(
    driver: Driver, producer: Producer
) -> None:
    job_id = await driver.job_in(S.QUEUED)
    assert await producer.cancel(driver.queue, job_id) == "cancelled"
    before = await driver.event_types(job_id)
    assert await producer.cancel(driver.queue, job_id) == "cancelled"
    assert await driver.event_types(job_id) == before == ["job.queued", "job.cancelled"]


async def test_unknown_job(producer: Producer, queue_name: str) -> None:
    with pytest.raises(JobNotFound):
        await producer.cancel(queue_name, "nope")
    with pytest.raises(JobNotFound):
        await producer.retry(queue_name, "nope")


@pytest.mark.parametrize("status", [S.SUCCEEDED, S.FAILED, S.CANCELLED])
async def test_worker_writes_refused_after_the_end(
    driver: Driver, producer: Producer, status: S
) -> None:
    delivery = await driver.running()
    if status is S.SUCCEEDED:
        await producer.succeed(delivery, 1)
    elif status is S.FAILED:
        await producer.fail(delivery, "x", retryable=False, backoff_ms=0, default_max_attempts=1)
    else:
        await producer.cancel(driver.queue, delivery.job_id)
        await producer.cancelled(delivery, "by request")
    before = await driver.event_types(delivery.job_id)
    assert not await producer.succeed(delivery, 2)
    assert not await producer.progress(driver.queue, delivery.job_id, delivery.attempt, 50)
    assert not await producer.cancelled(delivery, "again")
    outcome = await producer.fail(
        delivery, "y", retryable=True, backoff_ms=0, default_max_attempts=5
    )
    assert outcome == "fenced"
    assert await driver.event_types(delivery.job_id) == before
    assert await driver.status(delivery.job_id) is status


async def test_redelivered_finished_entry_is_skipped_and_acked(
    driver: Driver, producer: Producer
) -> None:
    delivery = await driver.running()
    await producer.succeed(delivery, 1)
    # As if the ack had been lost: the same entry shows up again.
    started = await producer.start(driver.queue, [(delivery.entry_id, delivery.job_id)], "c9")
    assert started == []
    assert await driver.event_types(delivery.job_id) == [
        "job.queued",
        "job.started",
        "job.succeeded",
    ]


async def test_idempotency_key_per_tenant(producer: Producer, queue_name: str) -> None:
    first = await producer.submit(
        SubmitRequest(type="noop", queue=queue_name, payload={"a": 1}),
        tenant="a",
        idempotency_key="k",
    )
    again = await producer.submit(
        SubmitRequest(type="sleep", queue=queue_name, payload={"b": 2}),
        tenant="a",
        idempotency_key="k",
    )
    other = await producer.submit(
        SubmitRequest(type="noop", queue=queue_name), tenant="b", idempotency_key="k"
    )
    assert first.created and not again.created and other.created
    assert again.job_id == first.job_id != other.job_id


async def test_stale_fencing_token_is_refused(driver: Driver, producer: Producer) -> None:
    """A presumed-dead owner (attempt 1) writes after another consumer reclaimed (attempt 2)."""
    old = await driver.running()
    report = await producer.reclaim(driver.queue, "c2", min_idle_ms=0, max_deliveries=3, count=10)
    (new,) = report.deliveries
    assert new.attempt == old.attempt + 1
    assert not await producer.progress(driver.queue, old.job_id, old.attempt, 99)
    assert not await producer.succeed(old, "late")
    old_lease = Lease(old.job_id, old.entry_id, old.attempt)
    assert (await producer.renew(driver.queue, "c1", [old_lease]))[0].held is False
    assert await producer.succeed(new, "fresh")
    job = await producer.get(driver.queue, old.job_id)
    assert job is not None and job.result == "fresh"
    types = await driver.event_types(old.job_id)
    assert types == ["job.queued", "job.started", "job.reclaimed", "job.succeeded"]


async def test_a_reclaimed_job_starts_its_new_attempt_from_nothing(
    driver: Driver, producer: Producer, redis: aioredis.Redis
) -> None:
    """The new owner runs the handler from the start: the snapshot must not keep showing the
    lost attempt's 80% until the new attempt first reports."""
    old = await driver.running()
    assert await producer.progress(driver.queue, old.job_id, old.attempt, 80, "encoding", "half")
    job_key = producer.keys(driver.queue).job(old.job_id)
    await redis.hset(job_key, "started_at", 1)  # the lost attempt started long ago
    report = await producer.reclaim(driver.queue, "c2", min_idle_ms=0, max_deliveries=3, count=10)
    (new,) = report.deliveries
    job = await producer.get(driver.queue, old.job_id)
    assert job is not None
    assert (job.status, job.attempt, job.owner) == (JobStatus.RUNNING, new.attempt, "c2")
    assert (job.progress, job.stage, job.message) == (0, None, None)
    events = await redis.xrange(producer.keys(driver.queue).job_events(old.job_id))
    reclaimed = [fields for _, fields in events if fields["event"] == "job.reclaimed"]
    reclaimed_at = int(reclaimed[0]["ts"])  # the event's own clock reading, a moment later
    assert job.started_at is not None and reclaimed_at - 1 <= job.started_at <= reclaimed_at


async def test_poison_entry_is_dead_lettered_with_reason(
    driver: Driver, producer: Producer
) -> None:
    job_id = await driver.submit()
    await driver.deliver("c1")  # delivered once, its consumer dies before starting it
    for consumer in ("c2", "c3"):
        report = await producer.reclaim(
            driver.queue, consumer, min_idle_ms=0, max_deliveries=3, count=10
        )
        assert [d.job_id for d in report.deliveries] == [job_id]
    report = await producer.reclaim(driver.queue, "c4", min_idle_ms=0, max_deliveries=3, count=10)
    assert report.dead == [job_id] and report.deliveries == []
    job = await producer.get(driver.queue, job_id)
    assert job is not None and job.status is S.FAILED and "poison" in (job.error or "")
    events = await producer.events(driver.queue, job_id)
    assert events[-1].event.value == "job.failed" and events[-1].data["reason"] == "poison"
    keys = producer.keys(driver.queue)
    assert await driver.redis.xlen(keys.jobs) == 0
    assert await driver.redis.xlen(keys.dead) == 1


async def test_tenant_index_drops_ids_past_retention(
    settings_factory: Callable[..., Settings], redis: aioredis.Redis, queue_name: str
) -> None:
    producer = Producer(redis, settings_factory(job_retention_s=60))
    index = producer.keys(queue_name).tenant_jobs("t")
    await redis.zadd(index, {"ancient": 1})  # a job whose hash expired long ago
    submitted = await producer.submit(SubmitRequest(type="noop", queue=queue_name), tenant="t")
    assert await redis.zrange(index, 0, -1) == [submitted.job_id]


async def test_eviction_policy_is_reported(fresh_redis: Callable[..., Any]) -> None:
    server = fresh_redis()
    client = aioredis.Redis.from_url(server.url, decode_responses=True)
    try:
        assert await warn_if_evicting(client) is None  # noeviction, as embedded Redis runs
        await client.config_set("maxmemory-policy", "allkeys-lru")
        assert await warn_if_evicting(client) == "allkeys-lru"
    finally:
        await client.aclose()


async def test_a_stream_node_size_that_costs_memory_is_reported(
    fresh_redis: Callable[..., Any],
) -> None:
    server = fresh_redis()
    client = aioredis.Redis.from_url(server.url, decode_responses=True)
    try:
        assert await note_stream_node_size(client) is None  # 512, as embedded Redis runs
        await client.config_set("stream-node-max-bytes", 4096)  # Redis's default
        assert await note_stream_node_size(client) == 4096
        await client.config_set("stream-node-max-bytes", 0)  # no cap: a 4 KiB first node
        assert await note_stream_node_size(client) == 0
    finally:
        await client.aclose()


async def test_batches_across_script_calls_treat_each_job_on_its_own(
    driver: Driver, producer: Producer
) -> None:
    """More jobs than one script call takes, with a cancelled job among them at start and a
    stale attempt among them at succeed: each job's outcome is its own, in order."""
    count = 2 * SCRIPT_BATCH + 10
    ids = await producer.submit_many([SubmitRequest(type="noop", queue=driver.queue)] * count)
    await producer.cancel(driver.queue, ids[70])  # before it is read: it must not start
    entries = await driver.deliver()
    deliveries = await producer.start(driver.queue, entries, "c1")
    assert [d.job_id for d in deliveries] == [i for i in ids if i != ids[70]]
    assert {d.attempt for d in deliveries} == {1}

    stale = deliveries[100]
    fenced = dataclasses.replace(stale, attempt=stale.attempt + 1)
    outcomes = [(fenced if d is stale else d, {"i": n}, ()) for n, d in enumerate(deliveries)]
    written = await producer.succeed_many(outcomes)
    assert written == [d is not stale for d in deliveries]

    terminal = await wait_for_terminal(driver.redis, driver.queue, set(ids) - {stale.job_id}, 5)
    assert all(len(events) == 1 for events in terminal.values())
    assert terminal[ids[70]] == ["job.cancelled"]
    assert await driver.status(stale.job_id) is S.RUNNING  # its owner's attempt still holds it
    pending = await driver.redis.xpending(producer.keys(driver.queue).jobs, CONSUMER_GROUP)
    assert pending["pending"] == 1  # only the stale job's delivery is still open
    assert await driver.redis.xlen(producer.keys(driver.queue).jobs) == 1


async def test_pipelined_scripts_are_loaded_again_after_a_flush(
    driver: Driver, producer: Producer
) -> None:
    """Pipelined script calls (bulk submit, a start or succeed batch over several calls, a
    take with the writes it carries) after Redis lost its scripts, as a restart leaves it:
    the scripts are loaded again and every job is submitted, started and finished exactly
    once."""
    count = max(SCRIPT_BATCH, SUBMIT_BATCH) + 6  # two script calls in one pipeline
    await driver.redis.script_flush()
    ids = await producer.submit_many([SubmitRequest(type="noop", queue=driver.queue)] * count)
    assert len(set(ids)) == count
    assert await driver.redis.xlen(producer.keys(driver.queue).jobs) == count
    await driver.redis.script_flush()
    deliveries = await producer.start(driver.queue, await driver.deliver(), "c1")
    assert sorted(d.job_id for d in deliveries) == sorted(ids)
    await driver.redis.script_flush()
    assert await producer.succeed_many([(d, None, ()) for d in deliveries[:-1]]) == [True] * (
        count - 1
    )
    more = await producer.submit_many([SubmitRequest(type="noop", queue=driver.queue)] * 3)
    await driver.redis.script_flush()
    taken = await producer.take(driver.queue, "c1", 10, [(deliveries[-1], None, ())])
    assert taken.written == [True]
    assert [d.job_id for d in taken.deliveries] == more
    assert await producer.succeed_many([(d, None, ()) for d in taken.deliveries]) == [True] * 3
    terminal = await wait_for_terminal(driver.redis, driver.queue, {*ids, *more}, 5)
    assert all(events == ["job.succeeded"] for events in terminal.values())
    assert await driver.redis.xlen(producer.keys(driver.queue).jobs) == 0


async def test_take_records_finished_jobs_and_starts_new_ones_in_one_call(
    driver: Driver, producer: Producer
) -> None:
    """A busy consumer's round trip: what it finished is recorded, and new entries are read
    for it and started, each as `start` would; fewer than asked means the queue ran dry."""
    ids = await producer.submit_many([SubmitRequest(type="noop", queue=driver.queue)] * 5)
    await producer.cancel(driver.queue, ids[3])  # before it is read: skipped and acked
    await producer.ensure_group(driver.queue)
    first = await producer.take(driver.queue, "c1", 2)
    assert [d.job_id for d in first.deliveries] == ids[:2]
    assert (first.written, first.exhausted) == ([], False)
    assert {d.attempt for d in first.deliveries} == {1}
    job = await producer.get(driver.queue, ids[0])
    assert job is not None and job.status is S.RUNNING and job.owner == "c1"

    finished = [(d, {"n": i}, ()) for i, d in enumerate(first.deliveries)]
    second = await producer.take(driver.queue, "c1", 10, finished)
    assert second.written == [True, True]
    assert [d.job_id for d in second.deliveries] == [ids[2], ids[4]]
    assert second.exhausted
    terminal = await wait_for_terminal(driver.redis, driver.queue, {ids[0], ids[1], ids[3]}, 5)
    assert terminal == {
        ids[0]: ["job.succeeded"],
        ids[1]: ["job.succeeded"],
        ids[3]: ["job.cancelled"],
    }
    assert await driver.event_types(ids[2]) == ["job.queued", "job.started"]
    keys = producer.keys(driver.queue)
    # Only the two started jobs' deliveries are still open.
    assert (await driver.redis.xpending(keys.jobs, CONSUMER_GROUP))["pending"] == 2
    assert await driver.redis.xlen(keys.jobs) == 2

    fenced = dataclasses.replace(second.deliveries[0], attempt=2)
    third = await producer.take(driver.queue, "c1", 0, [(fenced, None, ())])
    assert (third.written, third.deliveries, third.exhausted) == ([False], [], False)
    assert await driver.status(ids[2]) is S.RUNNING  # the stale attempt wrote nothing


async def test_a_jobs_trace_context_is_kept_and_given_to_a_consumer_that_asks(
    driver: Driver, producer: Producer, redis: aioredis.Redis
) -> None:
    """Kept only when given (a job without one has no field); handed out by every way a job
    starts (take, start, reclaim), only to a consumer that asks, so one that does not trace
    reads no more than before."""
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 congo=t61rcWkgMzE"
    request = SubmitRequest(type="noop", queue=driver.queue)
    (traced,) = await producer.submit_many([request], trace=trace)
    untraced = (await producer.submit(request)).job_id
    keys = producer.keys(driver.queue)
    assert await redis.hget(keys.job(traced), "trace") == trace
    assert not await redis.hexists(keys.job(untraced), "trace")

    await producer.ensure_group(driver.queue)
    taken = await producer.take(driver.queue, "c1", 10, traced=True)
    assert [(d.job_id, d.trace) for d in taken.deliveries] == [(traced, trace), (untraced, "")]
    again = await producer.reclaim(
        driver.queue, "c2", min_idle_ms=0, max_deliveries=3, count=10, traced=True
    )
    assert [d.trace for d in again.deliveries] == [trace, ""]
    untold = await producer.reclaim(driver.queue, "c3", min_idle_ms=0, max_deliveries=3, count=10)
    assert [d.trace for d in untold.deliveries] == [None, None]

    flow = SubmitRequest(type="noop", queue=driver.queue, children=[request, request])
    parent = await producer.submit(flow, tenant="t1", trace=trace)
    children = await producer.children_of(driver.queue, parent.job_id)
    for job_id in [parent.job_id, *children]:
        assert await redis.hget(keys.job(job_id), "trace") == trace
    started = await producer.start(driver.queue, await driver.deliver(), "c1", traced=True)
    assert {d.job_id: d.trace for d in started} == dict.fromkeys(children, trace)


# Whatever differs between two jobs made from the same request: their ids and times.
OWN_FIELDS = {"id", "created_at", "updated_at", "last_event_id", "entry_id", "due_at"}
DUE_AT = re.compile(r"(?<=\"due_at\":)\d+")


async def _as_stored(driver: Driver, producer: Producer, queue: str, job_id: str) -> Any:
    """A job's hash and its events stream, less what is its own (ids, times)."""
    job_key = producer.keys(queue).job(job_id)
    fields = await driver.redis.hgetall(job_key)
    events = await driver.redis.xrange(producer.keys(queue).job_events(job_id))
    return (
        {k: v for k, v in fields.items() if k not in OWN_FIELDS},
        [{k: DUE_AT.sub("_", v) for k, v in e.items() if k != "ts"} for _, e in events],
        await driver.redis.ttl(job_key),
    )


async def test_a_bulk_creates_each_job_as_submit_does(driver: Driver, producer: Producer) -> None:
    """`submit_many` (the bulk script for most, `submit` for a cache lookup, a flow of its
    own) stores each job exactly as `submit` stores the same request: hash, own events and
    expiry, and the answer's snapshot equals a read of the hash."""
    q = driver.queue
    variants = [
        SubmitRequest(type="noop", queue=q),
        SubmitRequest(type="noop", queue=q, payload={"n": [1, "é", None]}, priority=8),
        SubmitRequest(type="noop", queue=q, delay_s=30, max_attempts=3, timeout_s=1.5),
        SubmitRequest(type="noop", queue=q, callback_url="https://example.com/hook"),
        SubmitRequest(type="noop", queue=q, cache_ttl_s=60, payload={"cached": 1}),
        SubmitRequest(type="noop", queue=q, children=[SubmitRequest(type="noop")]),
    ]
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    one_by_one = [
        await producer.submit(r, tenant="t1", count_active=True, trace=trace) for r in variants
    ]
    in_bulk = await producer.submit_each(variants, tenant="t1", count_active=True, trace=trace)
    assert all(s.created for s in in_bulk)
    for single, bulk in zip(one_by_one, in_bulk, strict=True):
        assert await _as_stored(driver, producer, q, bulk.job_id) == await _as_stored(
            driver, producer, q, single.job_id
        )
        if bulk.fresh is not None:
            assert bulk.job == await producer.get(q, bulk.job_id)
    assert int(await driver.redis.get(producer.keys(q).tenant_active("t1")) or 0) == 2 * 7


async def test_a_bulk_keeps_each_queues_order_across_calls(
    driver: Driver, producer: Producer, redis: aioredis.Redis
) -> None:
    """Jobs of two queues, interleaved, more than one bulk call holds: each queue's stream
    holds its own jobs in the order they were given, each once."""
    other = f"{driver.queue}-b"
    requests = [
        SubmitRequest(type="noop", queue=driver.queue if i % 3 else other, payload={"i": i})
        for i in range(2 * SUBMIT_BATCH + 50)
    ]
    ids = await producer.submit_many(requests, tenant="t1")
    assert len(set(ids)) == len(requests)
    for queue in (driver.queue, other):
        entries = await redis.xrange(producer.keys(queue).jobs)
        expected = [i for i, r in zip(ids, requests, strict=True) if r.queue == queue]
        assert [e["job_id"] for _, e in entries] == expected


def _calls(producer: Producer, queue: str, n: int) -> list[tuple[Any, int]]:
    """`n` `submit_many` calls of one job each, tagged 0..n-1."""
    items = [(i, SubmitRequest(type="noop", queue=queue)) for i in range(n)]
    calls = producer._submit_calls(items, "t1", False, "")
    return [(call, tag) for tag, (call, _) in enumerate(calls)]


async def test_run_in_order_answers_an_error_reply_in_its_calls_place(
    driver: Driver, producer: Producer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error reply in the middle comes back in its call's place; the calls after it
    still ran, and the connection stays in step."""
    monkeypatch.setattr("producer.producer.SUBMIT_BATCH", 1)
    calls = _calls(producer, driver.queue, 5)
    await driver.redis.set("wrong", "not a zset")
    (name, keys, args), tag = calls[2]
    calls[2] = ((name, [*keys[:3], "wrong", keys[4]], args), tag)  # its ZADD fails
    got = [(tag, result) async for tag, result in producer.scripts.run_in_order(calls)]
    assert [tag for tag, _ in got] == [0, 1, 2, 3, 4]
    assert [isinstance(result, aioredis.ResponseError) for _, result in got] == [
        False, False, True, False, False,
    ]  # fmt: skip
    assert "WRONGTYPE" in str(got[2][1])
    assert await driver.redis.get("wrong") == "not a zset"  # a reply of its own


async def test_a_refused_call_answers_for_its_jobs_alone(
    driver: Driver, producer: Producer
) -> None:
    """Redis refuses the calls of one queue (its events stream is not a stream): those
    jobs get the error, and the other queue's jobs, sent after them, are created;
    `submit_each` raises it once all ran."""
    other = f"{driver.queue}-b"
    await driver.redis.set(producer.keys(driver.queue).events, "not a stream")
    requests = [SubmitRequest(type="noop", queue=q) for q in (driver.queue, other) * 3]
    answers = dict([a async for a in producer.submit_answers(requests, tenant="t1")])
    refused = [i for i, a in answers.items() if isinstance(a, aioredis.ResponseError)]
    assert sorted(refused) == [0, 2, 4]
    assert await driver.redis.xlen(producer.keys(other).jobs) == 3
    with pytest.raises(aioredis.ResponseError, match="WRONGTYPE"):
        await producer.submit_each(requests, tenant="t1")
    assert await driver.redis.xlen(producer.keys(other).jobs) == 6


async def test_a_bulk_after_a_script_flush_keeps_its_order(
    driver: Driver, producer: Producer
) -> None:
    """Redis lost its scripts (a restart): a bulk mixing `submit_many` calls and a cache
    lookup's `submit` call queues its jobs in the order given, not re-running the first
    calls after the later ones."""
    requests = [
        SubmitRequest(type="noop", queue=driver.queue, payload={"n": 0}),
        SubmitRequest(type="noop", queue=driver.queue, payload={"n": 1}, cache_ttl_s=60),
        SubmitRequest(type="noop", queue=driver.queue, payload={"n": 2}),
    ]
    await producer.submit(SubmitRequest(type="noop", queue=f"{driver.queue}-b"))  # `submit` loaded
    await driver.redis.script_flush()
    await producer.submit(SubmitRequest(type="noop", queue=f"{driver.queue}-b"))
    ids = await producer.submit_many(requests, tenant="t1")
    entries = await driver.redis.xrange(producer.keys(driver.queue).jobs)
    assert [e["job_id"] for _, e in entries] == ids


async def test_run_in_order_stopped_early_leaves_no_reply_behind(
    driver: Driver, producer: Producer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller that stops after the first result (an error of its own, a deadline): every
    call was sent and runs, and the connection, whose replies were not all read, is not
    handed to the next command."""
    monkeypatch.setattr("producer.producer.SUBMIT_BATCH", 1)
    stream = producer.scripts.run_in_order(_calls(producer, driver.queue, 20))
    async for tag, _ in stream:
        assert tag == 0
        break
    await stream.aclose()
    for n in range(20):  # each command gets its own reply, not a leftover
        assert await driver.redis.echo(f"m{n}") == f"m{n}"
    assert await driver.redis.xlen(producer.keys(driver.queue).jobs) == 20
