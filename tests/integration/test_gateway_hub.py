"""The SSE hub in process, on real Redis: fan-out, bounded buffers, the cap refill, reconnects."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.sse.catch_up import job_stream
from gateway.sse.hub import Hub
from gateway.sse.subscriber import Subscriber
from producer import Delivery, Producer
from schemas.models import Event, SubmitRequest
from schemas.settings import Settings
from tests.integration.helpers import Driver

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
    hub = Hub(Producer(client, settings), settings)
    hub.start()
    async with asyncio.timeout(DEADLINE_S):
        await hub.ready.wait()
    try:
        yield hub
    finally:
        await hub.close()
        await client.aclose()


class Connection:
    """Stands in for a client's socket: what the hub wrote, parsed back into events."""

    def __init__(self, accepting: bool = True) -> None:
        self.accepting = accepting
        self.events: list[Event] = []
        self.pings = 0
        self.arrived = asyncio.Event()

    def write(self, frame: bytes) -> bool:
        if not self.accepting:
            return False
        if frame.startswith(b":"):
            self.pings += 1
            self.arrived.set()
            return True
        data = next(line for line in frame.decode().split("\r\n") if line.startswith("data: "))
        self.events.append(Event.model_validate_json(data.removeprefix("data: ")))
        self.arrived.set()
        return True

    def __len__(self) -> int:
        return len(self.events)


def live(sub: Subscriber) -> Connection:
    connection = Connection()
    sub.go_live(connection.write)
    return connection


async def wait_for(connection: Connection, check: Callable[[Connection], bool]) -> None:
    async with asyncio.timeout(DEADLINE_S):
        while not check(connection):
            connection.arrived.clear()
            await connection.arrived.wait()


async def take(connection: Connection, n: int) -> list[Event]:
    """The next `n` events written to `connection`."""
    await wait_for(connection, lambda c: len(c.events) >= n)
    taken, connection.events = connection.events[:n], connection.events[n:]
    return taken


async def start(producer: Producer, queue: str, job_id: str) -> Delivery:
    """Start `job_id` as a consumer would (other entries read with it stay pending)."""
    entries = await Driver(producer, producer.redis, queue).deliver("test")
    (delivery,) = await producer.start(queue, [e for e in entries if e[1] == job_id], "test")
    return delivery


async def submit(producer: Producer, queue: str, tenant: str, job_type: str = "noop") -> str:
    submitted = await producer.submit(SubmitRequest(type=job_type, queue=queue), tenant=tenant)
    return submitted.job_id


async def test_events_reach_job_and_filtered_tenant_subscribers_only(
    hub: Hub, producer: Producer, queue_name: str
) -> None:
    acme_all = live(hub.subscribe_tenant("acme"))
    acme_sleep = live(hub.subscribe_tenant("acme", job_types=["sleep"]))
    acme_cancels = live(hub.subscribe_tenant("acme", event_types=["job.cancelled"]))
    globex = live(hub.subscribe_tenant("globex"))
    noop = await submit(producer, queue_name, "acme")
    per_job = live(hub.subscribe_job(queue_name, noop))
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


async def test_a_full_catch_up_buffer_drops_the_subscriber_and_nothing_else(
    hub: Hub, producer: Producer, queue_name: str
) -> None:
    slow = hub.subscribe_tenant("acme")  # never goes live: a response stuck catching up
    fast = live(hub.subscribe_tenant("acme"))
    for _ in range(6):
        job_id = await submit(producer, queue_name, "acme")
        assert [e.job_id for e in await take(fast, 1)] == [job_id]
    assert slow.dropped and slow.closed
    async with asyncio.timeout(DEADLINE_S):
        await slow.wait_closed()  # what ends its response
    assert hub.subscriber_count == 1
    assert len(slow) == 0  # its buffer is released at once
    assert hub.metrics.hub_drops._value.get() == 1


async def test_a_live_write_that_would_wait_drops_only_that_subscriber(
    hub: Hub, producer: Producer, queue_name: str
) -> None:
    stalled_sub = hub.subscribe_tenant("acme")
    stalled = Connection()
    stalled_sub.go_live(stalled.write)
    reading = live(hub.subscribe_tenant("acme"))
    first = await submit(producer, queue_name, "acme")
    assert [e.job_id for e in await take(stalled, 1)] == [first]
    stalled.accepting = False  # its socket buffer is full: the server would make us wait
    second = await submit(producer, queue_name, "acme")
    third = await submit(producer, queue_name, "acme")
    assert [e.job_id for e in await take(reading, 3)] == [first, second, third]
    assert stalled_sub.dropped and stalled_sub.closed
    assert len(stalled) == 0  # it resumes after `first`, the last id it was sent
    assert hub.subscriber_count == 1
    assert hub.metrics.hub_drops._value.get() == 1


async def test_falling_behind_the_cap_refills_job_subscribers_from_job_streams(
    redis: aioredis.Redis, settings_factory: Callable[..., Settings], queue_name: str
) -> None:
    settings = settings_factory(events_maxlen=1, sse_subscriber_buffer=100)
    producer = Producer(redis, settings)
    hub = Hub(producer, settings)  # not started: the test turns the reader by hand
    await submit(producer, queue_name, "acme")  # the stream exists: the hub starts at its tail
    await hub.resolve_positions()
    job_id = await submit(producer, queue_name, "acme")
    sub = hub.subscribe_job(queue_name, job_id)
    firehose = hub.subscribe_tenant("acme")
    other = await submit(producer, queue_name, "acme")
    delivery = await start(producer, queue_name, job_id)
    # Everything so far is trimmed away unread, as a busy queue's cap would.
    events_key = producer.keys(queue_name).events
    await redis.xtrim(events_key, maxlen=0, approximate=False)
    await producer.progress(queue_name, job_id, delivery.attempt, 50)

    assert await hub.read_once() == 1
    got_events = await take(live(sub), 3)
    got = [e.event.value for e in got_events]
    assert got == ["job.queued", "job.started", "job.progress"]
    assert [e.id for e in got_events] == [e.id for e in await producer.events(queue_name, job_id)]
    assert firehose.dropped  # a firehose cannot be refilled: it resumes from the stream
    assert hub.metrics.hub_refills._value.get() == 1
    assert other


async def test_the_reader_reconnects_by_itself(
    hub: Hub, producer: Producer, redis: aioredis.Redis, queue_name: str
) -> None:
    sub = live(hub.subscribe_tenant("acme"))
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
    stream = job_stream(sub, producer, queue_name, job_id, last_event_id=None, retry_ms=5000)
    async with asyncio.timeout(DEADLINE_S):
        sent = [message async for message in stream]
    assert [m.event for m in sent] == [None, "snapshot"]
    assert sent[1].id == (await producer.get(queue_name, job_id)).last_event_id  # type: ignore[union-attr]
    assert sub.closed  # the stream is complete: no live phase


@pytest.fixture
def manual_hub(redis: aioredis.Redis, settings: Settings) -> Hub:
    """A hub whose reader the test turns by hand (`read_once`), so what it has dispatched
    at each step is known. The test pins its start (`resolve_positions`)."""
    return Hub(Producer(redis, settings), settings)


async def test_an_event_both_read_in_the_snapshot_and_buffered_goes_out_once(
    manual_hub: Hub, producer: Producer, queue_name: str
) -> None:
    job_id = await submit(producer, queue_name, "acme")
    await manual_hub.resolve_positions()
    sub = manual_hub.subscribe_job(queue_name, job_id)
    delivery = await start(producer, queue_name, job_id)
    assert await manual_hub.read_once() == 1
    assert len(sub) == 1  # job.started is buffered, and it is in the snapshot too
    stream = job_stream(sub, producer, queue_name, job_id, last_event_id=None, retry_ms=5000)
    sent = [message async for message in stream]
    assert '"status":"running"' in sent[1].data
    connection = live(sub)
    assert len(connection) == 0  # not sent again
    await producer.succeed(delivery, {"ok": True})
    assert await manual_hub.read_once() == 1
    assert [e.event for e in connection.events] == ["job.succeeded"]
    assert sub.closed  # a job's stream ends after its terminal event


async def test_progress_is_throttled_once_per_job_for_every_client(
    manual_hub: Hub, producer: Producer, queue_name: str
) -> None:
    job_id = await submit(producer, queue_name, "acme")
    await manual_hub.resolve_positions()
    clients = [live(manual_hub.subscribe_job(queue_name, job_id)) for _ in range(3)]
    delivery = await start(producer, queue_name, job_id)
    for percent in range(1, 51):  # far faster than one per interval
        await producer.progress(queue_name, job_id, delivery.attempt, percent, "working")
    await producer.succeed(delivery, {"ok": True})
    assert await manual_hub.read_once() == 52

    sent = [[(e.event.value, e.data.get("progress")) for e in c.events] for c in clients]
    assert sent[0] == sent[1] == sent[2]
    # The first progress at once, the rest held and replaced by newer ones; the latest goes
    # out right before the terminal event.
    assert sent[0] == [
        ("job.started", None),
        ("job.progress", 1),
        ("job.progress", 50),
        ("job.succeeded", None),
    ]


async def test_live_subscribers_are_pinged_and_a_stalled_one_is_dropped_by_a_ping(
    redis_server: Any, settings_factory: Callable[..., Settings]
) -> None:
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    ping_settings = settings_factory(sse_ping_s=0.05)
    hub = Hub(Producer(client, ping_settings), ping_settings)
    hub.start()
    try:
        catching_up = hub.subscribe_tenant("acme")
        pinged = live(hub.subscribe_tenant("acme"))
        stalled_sub = hub.subscribe_tenant("acme")
        stalled_sub.go_live(Connection(accepting=False).write)
        await wait_for(pinged, lambda c: c.pings >= 2)
        assert pinged.events == []  # comments only: nothing that looks like an event
        assert stalled_sub.dropped  # a quiet stream still finds a client that stopped reading
        assert not catching_up.closed  # pings wait for the catch-up to end
        assert hub.subscriber_count == 2
    finally:
        await hub.close()
        await client.aclose()


def deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


async def test_events_that_cannot_be_encoded_stall_no_other_tenant(
    hub: Hub, producer: Producer, redis: aioredis.Redis, queue_name: str
) -> None:
    """The attack the hardening pass found: ten jobs whose terminal event nests 300 levels
    deep (more than pydantic will serialise), and an entry no version could read, ahead of
    another tenant's event. That event once waited 2 s per bad entry, for ever; now it is
    dispatched at once, and the bad jobs' own streams still end."""
    mallory_jobs = [f"{i:032x}" for i in range(10)]
    mallory_job_sub = hub.subscribe_job(queue_name, mallory_jobs[0])
    mallory_job = live(mallory_job_sub)
    mallory = live(hub.subscribe_tenant("mallory"))
    acme = live(hub.subscribe_tenant("acme"))
    events_key = producer.keys(queue_name).events
    for job_id in mallory_jobs:
        fields = {
            "event": "job.succeeded",
            "job_id": job_id,
            "queue": queue_name,
            "job_type": "noop",
            "tenant": "mallory",
            "status": "succeeded",
            "attempt": "1",
            "ts": str(int(time.time() * 1000)),
            "data": json.dumps({"result": deep(300)}),
        }
        await redis.xadd(events_key, fields)  # type: ignore[arg-type]
    await redis.xadd(events_key, {"written-by": "a future version"})

    started = time.monotonic()
    job_id = await submit(producer, queue_name, "acme")
    [event] = await take(acme, 1)
    delay_s = time.monotonic() - started
    assert (event.job_id, event.event) == (job_id, "job.queued")
    assert delay_s < 0.5, f"another tenant's event waited {delay_s:.2f}s"
    assert mallory_job_sub.closed and not mallory_job_sub.dropped  # its stream ended
    assert len(mallory) == len(mallory_job) == 0  # skipped, never half-written
    assert hub.metrics.hub_undeliverable._value.get() == 11


async def test_unwatched_events_are_skipped_and_the_next_subscriber_misses_nothing(
    hub: Hub, producer: Producer, queue_name: str
) -> None:
    """With nobody subscribed the hub jumps to the stream's tail without reading what is in
    between; a subscriber who comes after gets every event from then on, first to last."""
    before = [await submit(producer, queue_name, "acme") for _ in range(20)]
    tail = (await producer.event_stream_tails([queue_name]))[queue_name]
    assert await hub.skip_unwatched([queue_name]) == 0  # as its reader does, unwatched
    assert hub.positions[queue_name] == tail
    watcher = live(hub.subscribe_tenant("acme"))
    after = [await submit(producer, queue_name, "acme") for _ in range(5)]
    assert [e.job_id for e in await take(watcher, 5)] == after
    assert not set(before) & {e.job_id for e in watcher.events}
