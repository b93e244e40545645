"""Live subscribers in step with the hub, each written with one bare `transport.write`.

The hub's general path (`Subscriber.push`) checks, per event and client, what that client
was already sent (`SentIds`), picks the frame, and writes through the client's `Write`:
five Python calls over five objects, each object a likely cache miss with 10,000 clients.
Most live clients need none of it: a client that follows one queue and has been sent
exactly what the hub has offered its group admits every later event the same way, with its
`id:` line. The hub keeps those clients of a group (one job's, or one tenant's unfiltered
firehose when the gateway reads one queue) in the group's `Lane`, makes the check once for
all of them (`admit`) and writes the frame into each one's transport (`write`): three calls
into the event loop's C code on one object per client, as the floor does (bench.sse_floor).
At 10,000 clients this took the gateway from 9 to 7 us of CPU per delivery.

In step, exactly: a live subscriber on the transport path (gateway.sse.transport), without
filters, whose sent ids cover one queue and whose highest sent id is the lane's (`takes`).
The hub offers each event to the lane and then to the group's other subscribers, and moves
one that is now in step into the lane; from then on it is not offered events one by one,
and its own `SentIds` is left as it was. A member leaves only when it closes (its stream's
terminal event, its response's end, a drop): `Subscriber.close` takes it out of the lane
and back among the group's subscribers, so nothing is written into its connection after.

A member whose transport holds more than its high-water mark once a frame is written is
dropped, as the general path drops a client whose next write would have had to wait: the
memory a client that stopped reading pins stays within the mark plus one frame. A member
whose connection is closing is skipped, as uvicorn's send skips it; its response ends on the
disconnect.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.sse.subscriber import Subscriber


class Lane:
    __slots__ = ("_group", "high", "members", "seen")

    def __init__(self, group: dict[Subscriber, None]) -> None:
        self._group = group  # the group's other subscribers, where a member returns
        self.members: dict[asyncio.Transport, Subscriber] = {}
        self.seen: tuple[int, int] | None = None  # the highest id admitted, as SentIds keeps it
        self.high = 0  # the members' transports' high-water mark

    def admit(self, key: tuple[int, int]) -> bool:
        """Whether an event with this id goes out (with its `id:` line) to every member: the
        answer each member's own `SentIds.admit` would give."""
        if self.seen is not None and key <= self.seen:
            return False
        self.seen = key
        return True

    def takes(self, sub: Subscriber) -> bool:
        """Whether `sub` (one of the group's other subscribers) is in step with the lane."""
        transport = sub.transport
        return (
            transport is not None
            and transport not in self.members
            and not sub.closed
            and not sub.filtered
            and sub.sent.covers_one_queue
            and sub.sent.highest == self.seen
            and (not self.members or transport.get_write_buffer_limits()[1] == self.high)
        )

    def join(self, sub: Subscriber) -> None:
        transport = sub.transport
        assert transport is not None
        del self._group[sub]
        self.high = transport.get_write_buffer_limits()[1]
        self.members[transport] = sub
        sub.lane = self

    def leave(self, sub: Subscriber) -> None:
        if sub.transport is not None and self.members.pop(sub.transport, None) is sub:
            self._group[sub] = None
        sub.lane = None

    def write(self, frame: bytes) -> list[Subscriber]:
        """Write `frame`, framed as the transport path frames it, into every member's
        connection; the members now dropped."""
        high = self.high
        dropped: list[Subscriber] = []
        for transport in list(self.members):  # a copy: a drop changes the lane, after
            if transport.is_closing():
                continue
            transport.write(frame)
            if transport.get_write_buffer_size() > high:
                dropped.append(self.members[transport])
        for sub in dropped:
            sub.dropped = True
        return dropped

    def close_all(self) -> None:
        """A job's streams end after its terminal event."""
        for sub in list(self.members.values()):
            sub.close()

    def __len__(self) -> int:
        return len(self.members)
