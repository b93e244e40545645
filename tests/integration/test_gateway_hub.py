"""The SSE hub in process, on real Redis: fan-out, bounded buffers, the cap refill, reconnects."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.hub import Hub, Subscriber, SubscriberClosed
from gateway.streams import job_stream
from producer import Producer
from schemas.models import Event, SubmitRequest
from schemas.settings import Settings

pytestmark = pytest.mark.integration

DEADLINE_S = 5.0


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory(sse_subscriber_buffer=4)


@pytest.fixture
def producer(redis: aioredis.Redis, settings: Settings) -> Producer:
    return Producer(redis, settings)


@pytest.fixture
async def hub(redis_server: Any, settings: Settings) -> AsyncIterator[Hub]:
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True, client_name="hub")
    hub = Hub(client, settings)
    hub.start()
    async with asyncio.timeout(DEADLINE_S):
        await hub.ready.wait()
    try:
        yield hub
    finally:
        await hub.close()
        await client.aclose()


async def take(sub: Subscriber, n: int) -> list[Event]:
    async with asyncio.timeout(DEADLINE_S):
        return [e for e in [await sub.next() for _ in range(n)] if e is not None]


async def submit(producer: Producer, queue: str, tenant: str, job_type: str = "noop") -> str:
    submitted = await producer.submit(SubmitRequest(type=job_type, queue=queue), tenant=tenant)
    return submitted.job_id


async def test_events_reach_job_and_filtered_tenant_subscribers_only(
    hub: Hub, producer: Producer, queue_name: str
) -> None:
    acme_all = hub.subscribe_tenant("acme")
    acme_sleep = hub.subscribe_tenant("acme", job_types=["sleep"])
    acme_cancels = hub.subscribe_tenant("acme", event_types=["job.cancelled"])
    globex = hub.subscribe_tenant("globex")
    noop = await submit(producer, queue_name, "acme")
    per_job = hub.subscribe_job(queue_name, noop)
    sleep = await submit(producer, queue_name, "acme", "sleep")
    await producer.cancel(queue_name, noop)

    assert [(e.job_id, e.event) for e in await take(acme_all, 3)] == [
        (noop, "job.queued"),
        (sleep, "job.queued"),
        (noop, "job.cancelled"),
    ]
    assert [e.job_id for e in await take(acme_sleep, 1)] == [sleep]
    assert [e.event for e in await take(acme_cancels, 1)] == ["job.cancelled"]
    assert [e.event for e in await take(per_job, 1)] == ["job.cancelled"]
    assert len(globex) == len(acme_sleep) == len(acme_cancels) == len(per_job) == 0


async def test_a_full_buffer_drops_the_subscriber_and_nothing_else(
    hub: Hub, producer: Producer, queue_name: str
) -> None:
    slow = hub.subscribe_tenant("acme")
    fast = hub.subscribe_tenant("acme")
    for _ in range(6):
        job_id = await submit(producer, queue_name, "acme")
        assert [e.job_id for e in await take(fast, 1)] == [job_id]
    assert slow.dropped and slow.closed
    with pytest.raises(SubscriberClosed):
        await slow.next()
    assert hub.subscriber_count == 1
    assert len(slow) == 0  # its buffer is released at once


async def test_falling_behind_the_cap_refills_job_subscribers_from_job_streams(
    redis: aioredis.Redis, settings_factory: Callable[..., Settings], queue_name: str
) -> None:
    settings = settings_factory(events_maxlen=1, sse_subscriber_buffer=100)
    producer = Producer(redis, settings)
    hub = Hub(redis, settings)  # not started: the test turns the reader by hand
    await submit(producer, queue_name, "acme")  # the stream exists: the hub starts at its tail
    await hub.resolve_positions()
    job_id = await submit(producer, queue_name, "acme")
    sub = hub.subscribe_job(queue_name, job_id)
    firehose = hub.subscribe_tenant("acme")
    other = await submit(producer, queue_name, "acme")
    await producer.cancel(queue_name, job_id)
    # Everything so far is trimmed away unread, as a busy queue's cap would.
    events_key = producer.keys(queue_name).events
    await redis.xtrim(events_key, maxlen=0, approximate=False)
    await producer.retry(queue_name, job_id)

    assert await hub.read_once() == 1
    got_events = await take(sub, 3)
    got = [e.event.value for e in got_events]
    assert got == ["job.queued", "job.cancelled", "job.queued"]
    assert [e.id for e in got_events] == [e.id for e in await producer.events(queue_name, job_id)]
    assert firehose.dropped  # a firehose cannot be refilled: it resumes from the stream
    assert hub.metrics.hub_refills._value.get() == 1
    assert other


async def test_the_reader_reconnects_by_itself(
    hub: Hub, producer: Producer, redis: aioredis.Redis, queue_name: str
) -> None:
    sub = hub.subscribe_tenant("acme")
    first = await submit(producer, queue_name, "acme")
    assert [e.job_id for e in await take(sub, 1)] == [first]
    clients = await redis.client_list()
    hub_ids = [c["id"] for c in clients if c["name"] == "hub"]
    assert hub_ids
    for client_id in hub_ids:
        await redis.client_kill_filter(_id=client_id)
    second = await submit(producer, queue_name, "acme")
    assert [e.job_id for e in await take(sub, 1)] == [second]


async def test_a_job_that_ends_after_subscribing_but_before_the_snapshot(
    hub: Hub, producer: Producer, queue_name: str
) -> None:
    job_id = await submit(producer, queue_name, "acme")
    sub = hub.subscribe_job(queue_name, job_id)
    await producer.cancel(queue_name, job_id)  # lands in the buffer and in the snapshot
    stream = job_stream(
        sub, producer, queue_name, job_id, last_event_id=None, retry_ms=5000,
        progress_interval_s=0.2,
    )  # fmt: skip
    async with asyncio.timeout(DEADLINE_S):
        sent = [message async for message in stream]
    assert [m.event for m in sent] == [None, "snapshot"]
    assert sent[1].id == (await producer.get(queue_name, job_id)).last_event_id  # type: ignore[union-attr]
