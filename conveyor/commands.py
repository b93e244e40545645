"""`conveyor submit` (into the store, when no gateway is configured) and `conveyor inspect`:
the shell's view of a queue."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis
from pydantic import ValidationError

from conveyor.display import event_line
from producer import Producer
from producer.connection import redis_from_url
from schemas import CONSUMER_GROUP, EventType, Settings, SubmitRequest
from schemas.errors import InvalidPayload, UnknownJobType


def _client(settings: Settings) -> aioredis.Redis:
    if not settings.redis_url:
        raise SystemExit("CONVEYOR_REDIS_URL is not set: point it at the Redis `conveyor run` uses")
    # Any CONVEYOR_REDIS_URL form (Sentinel, Cluster too); see producer.connection.
    return redis_from_url(settings.redis_url, socket_timeout=30)


def submit_command(
    settings: Settings,
    job_type: str,
    *,
    payload: dict[str, Any],
    options: Mapping[str, Any],
    idempotency_key: str | None,
    wait: bool,
    tenant: str = "dev",
) -> int:
    """Submit straight into the store (no gateway): `options` are SubmitRequest fields."""
    try:
        request = SubmitRequest(type=job_type, payload=payload, **options)
    except ValidationError as exc:
        print(f"conveyor: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_submit(settings, request, idempotency_key, wait, tenant))


async def _submit(
    settings: Settings, request: SubmitRequest, idempotency_key: str | None, wait: bool, tenant: str
) -> int:
    from conveyor.gateway_app import job_types
    from gateway.payloads import JobTypes

    try:  # the gateway's check: what it would refuse is refused here too
        JobTypes(job_types(settings)).check_flow(request)
    except (UnknownJobType, InvalidPayload) as exc:
        print(exc, file=sys.stderr)
        return 2
    redis = _client(settings)
    try:
        producer = Producer(redis, settings)
        submitted = await producer.submit(request, tenant=tenant, idempotency_key=idempotency_key)
        print(submitted.job_id, flush=True)
        if not wait:
            return 0
        last = None
        async for last in producer.follow(request.queue, submitted.job_id):  # history, then live
            print(event_line(last), flush=True)
        return 0 if last is not None and last.event is EventType.SUCCEEDED else 1
    finally:
        await redis.aclose()


def pause_command(settings: Settings, queue: str, *, paused: bool) -> int:
    """`conveyor pause` / `resume`, on the store (Redis) as `conveyor inspect` reads it."""
    if queue not in settings.queues:
        print(f"queue {queue!r} is not configured (CONVEYOR_QUEUES)", file=sys.stderr)
        return 2
    return asyncio.run(_pause(settings, queue, paused))


async def _pause(settings: Settings, queue: str, paused: bool) -> int:
    redis = _client(settings)
    try:
        store = Producer(redis, settings)
        await (store.pause(queue) if paused else store.resume(queue))
        print(f"queue {queue!r} {'paused' if paused else 'resumed'}")
        return 0
    finally:
        await redis.aclose()


def inspect_command(settings: Settings, queue: str) -> int:
    return asyncio.run(_inspect(settings, queue))


async def _inspect(settings: Settings, queue: str) -> int:
    redis = _client(settings)
    try:
        for line in await inspect_lines(Producer(redis, settings), queue):
            print(line)
    finally:
        await redis.aclose()
    return 0


async def inspect_lines(store: Producer, queue: str) -> list[str]:
    """What `conveyor inspect` prints; the same facts as the README's redis-cli commands."""
    settings, keys = store.settings, store.keys(queue)  # key names only to print them
    now_ms = int(time.time() * 1000)
    stats = await store.stats(queue)
    next_due = stats.next_due_ms
    lines = [
        f"queue {queue!r}  ({keys.jobs})" + ("  PAUSED" if await store.paused(queue) else ""),
        f"  stream entries   {stats.length}  (undelivered + pending; finished entries are deleted)",
        f"  delayed          {stats.delayed}"
        + (f"  (next due in {(next_due - now_ms) / 1000:.1f}s)" if next_due is not None else ""),
        f"  dead-lettered    {stats.dead}  ({keys.dead})",
        f"  events           {stats.events}  ({keys.events}, capped near {settings.events_maxlen})",
    ]
    schedules = await store.schedules(queue)
    if schedules:
        lines.append(f"  schedules        {len(schedules)}  ({keys.schedules})")
    for schedule in schedules:
        when = (
            f"next in {(schedule.next_run_at - now_ms) / 1000:.0f}s"
            if schedule.next_run_at is not None
            else "not yet seen by a worker"
        )
        lines.append(
            f"    {schedule.key:<32} {schedule.type:<16} {when}  ({schedule.cron}, "
            f"{schedule.timezone})"
        )
    if stats.group is None:
        lines.append("  no consumer group yet (no worker has started on this queue)")
        return lines
    lines.append(
        f"  group {CONSUMER_GROUP!r}  pending {stats.pending}  lag {stats.lag}"
        f"  backlog {stats.backlog}"
        f"  last delivered {stats.group['last-delivered-id']}"
    )
    consumers = await store.consumers(queue)
    stale_after_ms = settings.visibility_timeout_s * 3 * 1000
    lines.append(f"  consumers        {len(consumers)}")
    for consumer in sorted(consumers, key=lambda c: c["name"]):
        last_seen = stats.seen_ms.get(consumer["name"], 0)
        age = (now_ms - last_seen) if last_seen else None
        flag = "  NOT SEEN FOR A WHILE" if age is None or age > stale_after_ms else ""
        lines.append(
            f"    {consumer['name']:<40} pending {consumer['pending']:>5}"
            f"  idle {consumer['idle'] / 1000:>8.1f}s"
            f"  seen {'never' if age is None else f'{age / 1000:.1f}s ago'}{flag}"
        )
    pending = await store.oldest_pending(queue, 20)
    if pending:
        lines.append("  oldest pending entries (id, consumer, idle, deliveries):")
        for p in pending:
            lines.append(
                f"    {p['message_id']}  {p['consumer']:<40}"
                f" {p['time_since_delivered'] / 1000:>8.1f}s  {p['times_delivered']}"
            )
    return lines
