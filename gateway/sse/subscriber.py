"""One SSE response's place in the hub, and how an event reaches its socket.

A response lives in two phases:

1. Catching up. The response reads the snapshot (or replays after Last-Event-ID) from Redis
   and sends it the ordinary way. Meanwhile the hub appends live events to the subscriber's
   bounded buffer; one that overflows is dropped.
2. Live. `go_live()` flushes the buffer and from then on the hub writes each event straight
   into the connection from its own loop: one frame encoded per event, then a synchronous
   write per client (`gateway.sse.transport` chooses how). There is no task switch, queue
   or generator step per client and event, which is what lets one process deliver an event
   to 10,000 browsers in about the time the kernel takes to send 10,000 small TCP segments.

A live write that would have to wait means the client is not reading and the server's
write buffer is full. That frame is not sent and the subscriber is dropped: the response
ends, and the client reconnects with the last id it did receive. Memory stays bounded by
the transport's buffer, and nothing is lost.

`SentIds` makes the two phases one sequence. It holds the ids already sent, so an event
that arrives both in the catch-up read and live from the hub goes out once, and it keeps
the client's resume point (the `id:` line) strictly increasing.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from sse_starlette.event import ServerSentEvent
from starlette.types import Send

from schemas.models import Event
from schemas.stream_id import parse_id

if TYPE_CHECKING:
    from gateway.sse.lane import Lane

PING_FRAME = b": ping\r\n\r\n"

Write = Callable[[bytes], bool]
"""Write one whole SSE frame now; False when it could not be written without waiting."""


def chunk(frame: bytes) -> bytes:
    """`frame` as one HTTP/1.1 chunk, for a `Write` that takes frames framed (the transport
    writer of gateway.sse.transport, which bypasses the server's own framing)."""
    return b"%x\r\n%b\r\n" % (len(frame), frame)


CHUNKED_PING_FRAME = chunk(PING_FRAME)


def event_message(event: Event, *, with_id: bool = True) -> ServerSentEvent:
    return ServerSentEvent(
        data=event.model_dump_json(),
        event=event.event.value,
        id=event.id if with_id else None,
    )


class Outgoing:
    """An event on its way to many subscribers: its id parsed and each frame encoded once,
    whatever the number of clients."""

    __slots__ = ("_frames", "event", "key", "queue", "terminal")

    def __init__(self, event: Event) -> None:
        self.event = event
        self.key = parse_id(event.id)
        self.queue = event.queue
        self.terminal = event.event.is_terminal
        # with_id + 2 * chunked -> the frame
        self._frames: list[bytes | None] = [None, None, None, None]

    def frame(self, with_id: bool, chunked: bool = False) -> bytes:
        frame = self._frames[with_id + 2 * chunked]
        if frame is None:
            frame = event_message(self.event, with_id=with_id).encode()
            if chunked:
                frame = chunk(frame)
            self._frames[with_id + 2 * chunked] = frame
        return frame


class SentIds:
    """What one client has been sent. Ids are per queue (each queue has its own events
    stream), and the `id:` line the client resumes from must only grow: an event whose id
    is not above the highest sent (another queue's) goes out without one."""

    # The hub reads this once per event and client. Most clients follow one queue, whose
    # mark lives in two slots here; a dict is made only for a second queue, so the common
    # check touches this one object.
    __slots__ = ("_others", "_queue", "_seen", "highest")

    def __init__(self) -> None:
        self.highest: tuple[int, int] | None = None
        self._queue: str | None = None
        self._seen: tuple[int, int] | None = None
        self._others: dict[str, tuple[int, int]] | None = None

    def mark(self, queues: list[str], key: tuple[int, int]) -> None:
        """Everything up to `key` in these queues counts as sent."""
        for queue in queues:
            self._record(queue, key)
        self.highest = key if self.highest is None else max(self.highest, key)

    def admit(self, queue: str, key: tuple[int, int]) -> bool | None:
        """None: already sent, skip it. Else whether to send it with its `id:` line."""
        if queue == self._queue:
            seen = self._seen
            if seen is not None and key <= seen:
                return None
            self._seen = key
        else:
            seen = self._others.get(queue) if self._others is not None else None
            if seen is not None and key <= seen:
                return None
            self._record(queue, key)
        highest = self.highest
        if highest is None or key > highest:
            self.highest = key
            return True
        return False

    @property
    def covers_one_queue(self) -> bool:
        return self._others is None

    def _record(self, queue: str, key: tuple[int, int]) -> None:
        if self._queue is None or queue == self._queue:
            self._queue, self._seen = queue, key
        elif self._others is None:
            self._others = {queue: key}
        else:
            self._others[queue] = key


def direct_writer(send: Send) -> Write:
    """A `Write` over an ASGI `send`, run to completion on the spot.

    An ASGI server's send only waits when its transport is paused for backpressure (uvicorn
    checks that before it writes anything), so a send that does not finish at once is a
    client that stopped reading: it is closed unsent and reported, never awaited.
    """

    def write(frame: bytes) -> bool:
        step = send({"type": "http.response.body", "body": frame, "more_body": True}).__await__()
        try:
            step.send(None)
        except StopIteration:
            return True
        except Exception:  # the connection is gone: the response is ending anyway
            return False
        step.close()
        return False

    return write


class Subscriber:
    """One response's inbox: buffered while the response catches up, then written through."""

    __slots__ = (
        "_buffer",
        "_chunked",
        "_closed_event",
        "_write",
        "closed",
        "dropped",
        "event_types",
        "filtered",
        "job_id",
        "job_types",
        "lane",
        "maxsize",
        "queue",
        "queues",
        "sent",
        "tenant",
        "transport",
    )

    def __init__(
        self,
        maxsize: int,
        *,
        queue: str | None = None,
        job_id: str | None = None,
        tenant: str | None = None,
        queues: frozenset[str] | None = None,
        job_types: frozenset[str] | None = None,
        event_types: frozenset[str] | None = None,
    ) -> None:
        self.maxsize = maxsize
        self.queue = queue
        self.job_id = job_id
        self.tenant = tenant
        self.queues = queues
        self.job_types = job_types
        self.event_types = event_types
        self.filtered = queues is not None or job_types is not None or event_types is not None
        self.sent = SentIds()
        self._buffer: deque[Outgoing] = deque()
        self._write: Write | None = None
        self._chunked = False
        # On the transport path: the connection, and the hub's lane it is written in, if any.
        self.transport: asyncio.Transport | None = None
        self.lane: Lane | None = None
        self._closed_event = asyncio.Event()
        self.closed = False
        self.dropped = False

    @property
    def live(self) -> bool:
        return self._write is not None

    def matches(self, event: Event) -> bool:
        return (
            (self.queues is None or event.queue in self.queues)
            and (self.job_types is None or event.job_type in self.job_types)
            and (self.event_types is None or event.event.value in self.event_types)
        )

    def push(self, out: Outgoing) -> bool:
        """Take `out` without ever blocking; False when this subscriber is now dropped."""
        if self.closed:
            return True
        write = self._write
        if write is None:
            if len(self._buffer) >= self.maxsize:
                return self._drop()
            self._buffer.append(out)
            return True
        # Live: the hub's inner loop, once per event and client, so one call each for the
        # id check, the frame and the write, and nothing else.
        with_id = self.sent.admit(out.queue, out.key)
        if with_id is None:
            return True
        if not write(out.frame(with_id, self._chunked)):
            return self._drop()
        if out.terminal and self.job_id is not None:
            self.close()  # a job's stream ends after its terminal event
        return True

    def go_live(
        self, write: Write, *, chunked: bool = False, transport: asyncio.Transport | None = None
    ) -> None:
        """Flush what came in while catching up, then have the hub write through `write`
        (which takes frames framed as HTTP/1.1 chunks when `chunked`). `transport`: the
        connection `write` writes into, when it is the transport path's (the hub may then
        write there itself: gateway.sse.lane)."""
        self._write = write
        self._chunked = chunked
        self.transport = transport
        while self._buffer and not self.closed:
            self.push(self._buffer.popleft())

    def ping(self) -> bool:
        """Write a comment ping; False when this subscriber is now dropped."""
        if self.closed or self._write is None:
            return True
        frame = CHUNKED_PING_FRAME if self._chunked else PING_FRAME
        return self._write(frame) or self._drop()

    def _drop(self) -> bool:
        self.dropped = True
        self.close()
        return False

    def close(self) -> None:
        if self.lane is not None:
            self.lane.leave(self)
        self.closed = True
        self._buffer.clear()
        self._closed_event.set()

    async def wait_closed(self) -> None:
        await self._closed_event.wait()

    def __len__(self) -> int:
        return len(self._buffer)
