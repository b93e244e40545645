"""The SSE fan-out hub: one Redis reader per gateway process, many in-memory subscribers.

Concurrency::

    Redis  conveyor:{q}:events  (one stream per configured queue)
       │  XREAD BLOCK, from the streams' tails at startup, then from the last id read
       ▼
    Hub._run  ── one task per process; reconnects by itself after Redis errors; also
       │  pings every live subscriber every `sse_ping_s` (no ping task per connection)
       │  Event.from_entry; progress throttled per job (a timer sends the held one);
       │  each event parsed and encoded once (Outgoing), then offered to
       │    subscribers of that job id          (per-job SSE)
       │    subscribers of that tenant, filtered (firehose SSE)
       ▼
    Subscriber (gateway.sse.subscriber) ── never blocks the hub:
       catching up: a bounded buffer; overflow drops the subscriber
       live: the frame is written straight into the connection; a write that would wait
             (the client stopped reading) drops the subscriber
       in step with the hub (gateway.sse.lane): one check per event for the whole group,
             then a bare transport.write per connection
       ▼
    response (gateway.sse.catch_up + gateway.sse.response) ── sends the snapshot or replay,
       hands the subscriber its connection, and ends when the subscriber closes. A dropped client
       resumes with Last-Event-ID: memory stays bounded and nothing is lost.

A browser costs no Redis connection. When the reader finds it fell behind the events stream's
cap (entries after its position were trimmed before it read them), it refills each affected
job subscriber from that job's own stream; firehose subscribers of that queue are ended (they
resume with Last-Event-ID as far as the capped stream still reaches).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any

from redis.exceptions import RedisError

from gateway.metrics import Metrics
from gateway.sse.lane import Lane
from gateway.sse.subscriber import Outgoing, Subscriber
from gateway.sse.throttle import ProgressThrottle
from producer import Producer
from schemas.models import Event
from schemas.settings import Settings
from schemas.stream_id import parse_id

log = logging.getLogger("conveyor.gateway.hub")

Subscribers = dict[Subscriber, None]
"""An ordered set: insertion order, so the hub writes to the oldest connections first."""

BATCH = 500
BLOCK_MS = 1000
BACKOFF_MAX_S = 2.0
# With nobody subscribed, the reader reads at most this often: one XREAD per event (per
# submit, one at a time) was a fifth of a lightly loaded gateway's CPU for events nobody
# was sent. A subscriber wakes the reader at once.
UNWATCHED_READ_S = 0.05
# Live subscribers pinged per turn of the event loop: a ping round over 10,000 clients
# never holds an event back for more than one slice.
PING_SLICE = 500


class Group:
    """One job's subscribers, or one tenant's firehose subscribers: those in step with the
    hub, in the group's lane (gateway.sse.lane), and the others."""

    __slots__ = ("ends_at_terminal", "lane", "others")

    def __init__(self, *, lane: bool, ends_at_terminal: bool) -> None:
        self.others: Subscribers = {}
        self.lane = Lane(self.others) if lane else None
        self.ends_at_terminal = ends_at_terminal

    def subscribers(self) -> list[Subscriber]:
        members = list(self.lane.members.values()) if self.lane is not None else []
        return [*self.others, *members]

    def __len__(self) -> int:
        return len(self.others) + (len(self.lane) if self.lane is not None else 0)


class Hub:
    """Reads every configured queue's events stream once and fans the events out."""

    def __init__(self, store: Producer, settings: Settings, metrics: Metrics | None = None) -> None:
        # Its own store, on a connection whose timeout outlasts the reader's XREAD BLOCK.
        self.store = store
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.positions: dict[str, str] = {}  # queue -> the last id read of its events stream
        # Subscribers in the order they came, as dict keys rather than a set: the hub's loop
        # then visits them roughly in the order their objects lie in memory, where a set's
        # hash order scattered them (1.5 us more per delivery at 5,000 subscribers).
        self._jobs: dict[str, Group] = {}
        self._tenants: dict[str, Group] = {}
        # A tenant's unfiltered firehose follows one queue only when the gateway reads one.
        self._tenant_lanes = len(settings.queues) == 1
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._resolving = asyncio.Lock()
        self._throttle = ProgressThrottle(settings.sse_progress_interval_s)
        self._throttle_timer: asyncio.TimerHandle | None = None
        self.ready = asyncio.Event()
        self._watched = asyncio.Event()  # set by each subscribe: wakes an unwatched reader
        self.dispatched = 0

    # --- subscribers --------------------------------------------------------------------

    def subscribe_job(self, queue: str, job_id: str) -> Subscriber:
        sub = Subscriber(self.settings.sse_subscriber_buffer, queue=queue, job_id=job_id)
        group = self._jobs.get(job_id)
        if group is None:
            group = self._jobs[job_id] = Group(lane=True, ends_at_terminal=True)
        group.others[sub] = None
        self._watched.set()
        return sub

    def subscribe_tenant(
        self,
        tenant: str,
        *,
        queues: Iterable[str] | None = None,
        job_types: Iterable[str] | None = None,
        event_types: Iterable[str] | None = None,
    ) -> Subscriber:
        sub = Subscriber(
            self.settings.sse_subscriber_buffer,
            tenant=tenant,
            queues=frozenset(queues) if queues else None,
            job_types=frozenset(job_types) if job_types else None,
            event_types=frozenset(event_types) if event_types else None,
        )
        group = self._tenants.get(tenant)
        if group is None:
            group = self._tenants[tenant] = Group(lane=self._tenant_lanes, ends_at_terminal=False)
        group.others[sub] = None
        self._watched.set()
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        sub.close()  # out of its lane, if it was in one: back among its group's others
        index, key = (self._jobs, sub.job_id) if sub.job_id else (self._tenants, sub.tenant)
        group = index.get(key) if key is not None else None
        if key is None or group is None or sub not in group.others:
            return
        if sub.dropped:
            self.metrics.hub_drops.inc()
        del group.others[sub]
        if not group:
            del index[key]

    @property
    def subscriber_count(self) -> int:
        return sum(map(len, self._groups()))

    def dispatch(self, event: Event) -> None:
        groups = [self._jobs.get(event.job_id), self._tenants.get(event.tenant)]
        self.dispatch_to([group for group in groups if group is not None], event)
        self.dispatched += 1

    def dispatch_to(self, groups: list[Group], event: Event) -> None:
        """Offer `event` to the subscribers of `groups` it matches."""
        if not groups:
            return
        out = Outgoing(event)
        try:
            out.frame(with_id=True)  # encoded once here, so a failure is met before any push
        except ValueError as exc:  # pydantic's serialisation errors are ValueErrors
            subs = [
                s for g in groups for s in g.subscribers() if not s.filtered or s.matches(event)
            ]
            self._undeliverable(subs, event, exc)
            return
        dropped: list[Subscriber] = []
        for group in groups:
            lane = group.lane
            if lane is not None and lane.admit(out.key) and lane.members:
                dropped += lane.write(out.frame(True, chunked=True))
                if out.terminal and group.ends_at_terminal:
                    lane.close_all()
            # The others one by one, in one pass over a copy of the keys (each visit is a
            # likely cache miss), filters checked on the way; one now in step joins the lane.
            for sub in list(group.others):
                if (not sub.filtered or sub.matches(event)) and not sub.push(out):
                    dropped.append(sub)
                elif lane is not None and lane.takes(sub):
                    lane.join(sub)
        for sub in dropped:
            self.unsubscribe(sub)

    def _undeliverable(self, subs: list[Subscriber], event: Event, exc: Exception) -> None:
        """An event that cannot be encoded is skipped for its own subscribers, never retried:
        one job's unencodable data once stalled the reader, and every tenant's live events
        with it. A job's stream still ends after its terminal event, skipped or not."""
        self.metrics.hub_undeliverable.inc()
        log.warning(
            "hub: %s %s of job %s cannot be encoded (%s): skipped for its %d subscribers",
            event.event.value,
            event.id,
            event.job_id,
            exc,
            len(subs),
        )
        if event.event.is_terminal:
            for sub in subs:
                if sub.job_id is not None:
                    sub.close()

    # --- progress throttle: once per job for every client -------------------------------

    def offer(self, event: Event) -> None:
        """Dispatch `event` through the progress throttle."""
        for ready in self._throttle.admit(event, time.monotonic()):
            self.dispatch(ready)

    def _arm_throttle_timer(self) -> None:
        """Make sure a held progress event goes out when its interval has passed, even if
        nothing else arrives for its job."""
        delay = self._throttle.next_due_in(time.monotonic())
        if delay is None or self._throttle_timer is not None:
            return
        self._throttle_timer = asyncio.get_running_loop().call_later(delay, self._send_due)

    def _send_due(self) -> None:
        self._throttle_timer = None
        for ready in self._throttle.due(time.monotonic()):
            self.dispatch(ready)
        self._arm_throttle_timer()

    # --- the reader ---------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="conveyor-hub-reader")

    async def close(self) -> None:
        self._closing = True
        task, self._task = self._task, None
        if self._throttle_timer is not None:
            self._throttle_timer.cancel()
        # Cancel until it ends: a cancellation that lands inside redis-py's own socket
        # timeout can come out as a TimeoutError, which the loop would take for a Redis error.
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)
        if task is not None and not task.cancelled():
            with contextlib.suppress(Exception):
                task.result()
        for group in self._groups():
            for sub in group.subscribers():
                sub.close()
        self._jobs.clear()
        self._tenants.clear()

    async def resolve_positions(self) -> None:
        """Start at each stream's current tail ('$', but pinned, so nothing slips between
        two XREADs); a stream that does not exist yet is read from its beginning."""
        self.positions = await self.store.event_stream_tails(self.settings.queues)
        self.ready.set()

    def stream_groups(self) -> list[list[str]]:
        """The queues one XREAD may cover together (on a Redis Cluster, one hash slot's)."""
        return self.store.event_stream_groups(self.settings.queues)

    async def _run(self) -> None:
        # One blocking reader per group: on a cluster, a quiet queue's XREAD BLOCK must not
        # hold back the events of a queue on another slot.
        await asyncio.gather(
            self._ping_loop(), *(self._read_loop(group) for group in self.stream_groups())
        )

    async def _ping_loop(self) -> None:
        """Comment pings every `sse_ping_s` keep idle connections open through proxies, and
        find clients that stopped reading on quiet streams. One loop for every live
        subscriber, rather than a task per connection."""
        while not self._closing:
            await asyncio.sleep(self.settings.sse_ping_s)  # a period, not a wait for work
            live = [sub for group in self._groups() for sub in group.subscribers() if sub.live]
            for start in range(0, len(live), PING_SLICE):
                for sub in live[start : start + PING_SLICE]:
                    if not sub.ping():
                        self.unsubscribe(sub)
                await asyncio.sleep(0)

    def _groups(self) -> list[Group]:
        return [*self._jobs.values(), *self._tenants.values()]

    async def _read_loop(self, queues: list[str]) -> None:
        backoff = 0.05
        while not self._closing:
            try:
                if not self.ready.is_set():
                    # Several readers start at once; positions are pinned once, or a late
                    # reader would move an early one's position back to the tail.
                    async with self._resolving:
                        if not self.ready.is_set():
                            await self.resolve_positions()
                if self._watching():
                    read = await self.read_once(BLOCK_MS, queues)
                else:
                    read = await self.skip_unwatched(queues)
                backoff = 0.05
                if read < BATCH and not self._watching():
                    self._watched.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(UNWATCHED_READ_S):
                            await self._watched.wait()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self.metrics.hub_errors.inc()
                log.warning(
                    "hub reader: %s: %s; reconnecting in %.2fs", type(exc).__name__, exc, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
            except Exception:
                self.metrics.hub_errors.inc()
                log.exception("hub reader: unexpected error")
                await asyncio.sleep(BACKOFF_MAX_S)

    def _watching(self) -> bool:
        return bool(self._jobs or self._tenants)

    async def skip_unwatched(self, queues: list[str]) -> int:
        """With nobody subscribed, move each queue's position to its stream's last entry
        without reading the entries in between: a bulk submit's thousand events, read and
        parsed by redis-py only to be dropped, were 7% of the gateway's time per job. A
        subscriber who came while the tails were read leaves the positions as they were,
        for `read_once` to hand it what it needs. Returns 0 (nothing read)."""
        tails = await self.store.event_stream_tails(queues)
        if self._watching():
            return 0
        now_ms = time.time() * 1000
        for queue, last in tails.items():
            if last != "0-0" and last != self.positions[queue]:
                self._skip_to(queue, last, now_ms)
        return 0

    def _skip_to(self, queue: str, last: str, now_ms: float) -> None:
        """Move `queue`'s position past entries nobody was sent, to `last`; the lag is
        that entry's, by its id's milliseconds."""
        self.positions[queue] = last
        self.metrics.hub_lag.set(max(0.0, now_ms - int(last.partition("-")[0])) / 1000)

    async def read_once(self, block_ms: int | None = None, queues: list[str] | None = None) -> int:
        """One XREAD over `queues`' events streams (default: every queue's, one XREAD per
        group of `stream_groups`); dispatches what it read and returns how many."""
        groups = [queues] if queues is not None else self.stream_groups()

        def xread(group: list[str]) -> Any:
            positions = {queue: self.positions[queue] for queue in group}
            return self.store.read_events(positions, BATCH, block_ms)

        # One group (always, on one Redis) is awaited directly: no task in between, so
        # events are dispatched as soon as the reply is in.
        replies: list[Any] = (
            [await xread(groups[0])]
            if len(groups) == 1
            else await asyncio.gather(*map(xread, groups))
        )
        total = 0
        for queue, entries in [item for reply in replies for item in reply]:
            started = time.perf_counter()
            if len(entries) >= min(BATCH, self.settings.events_maxlen):
                await self._refill_if_trimmed(queue, entries[0][0])
            now_ms = time.time() * 1000
            if not self._watching():
                # Nobody to hand them to (the last subscriber left during the XREAD): no
                # event is parsed.
                self._skip_to(queue, entries[-1][0], now_ms)
                readable = []
            else:
                readable = entries
            for entry_id, fields in readable:
                # The position moves past every entry, readable or not: an entry that raised
                # here was once read again, and again, holding back everything after it.
                self.positions[queue] = entry_id
                try:
                    event = Event.from_entry(entry_id, fields)
                except (ValueError, KeyError) as exc:  # not an event this version can read
                    self.metrics.hub_undeliverable.inc()
                    log.warning("hub: unreadable entry %s of %s skipped: %s", entry_id, queue, exc)
                    continue
                self.offer(event)
                self.metrics.hub_lag.set(max(0.0, now_ms - event.ts) / 1000)
            self.metrics.hub_events.inc(len(entries))
            self.metrics.hub_dispatch.observe(time.perf_counter() - started)
            total += len(entries)
        self._arm_throttle_timer()
        return total

    async def _refill_if_trimmed(self, queue: str, first_read: str) -> None:
        """A full batch may mean we lag by more than the cap. If the stream now starts after
        our position, the entries between were trimmed unread: fetch them, for every job
        subscriber of that queue, from the job's own stream (ids are the same there)."""
        position = self.positions[queue]
        if position == "0-0":  # read from the beginning: nothing before it to lose
            return
        head = await self.store.event_stream_head(queue)
        if head is None or parse_id(head) <= parse_id(position):
            return
        self.metrics.hub_refills.inc()
        log.warning("hub reader fell behind the cap of %s's events: refilling", queue)
        for job_id, group in list(self._jobs.items()):
            if not any(s.queue == queue for s in group.subscribers()):
                continue
            for event in await self.store.events(queue, job_id, position, before=first_read):
                self.dispatch_to([group], event)
        for tenant_group in list(self._tenants.values()):
            for sub in tenant_group.subscribers():
                if sub.queues is None or queue in sub.queues:
                    sub.dropped = True
                    self.unsubscribe(sub)
