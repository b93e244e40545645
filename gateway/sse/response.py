"""The SSE response tied to a hub subscriber: catch-up from Redis, then live from the hub."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
from sse_starlette import EventSourceResponse
from sse_starlette.event import ServerSentEvent
from starlette.types import Message, Receive, Scope, Send

from gateway.metrics import Metrics
from gateway.sse.hub import Hub
from gateway.sse.subscriber import Subscriber
from gateway.sse.transport import LiveWriter, live_writer

# After the hub drops a subscriber, its generator normally ends the response at once. If it
# cannot (it is stuck writing to a client that stopped reading), the connection is cut.
DROP_GRACE_S = 1.0


class HubEventSourceResponse(EventSourceResponse):
    """An SSE response tied to a hub subscriber: it sends the catch-up read from Redis, then
    hands the subscriber its connection (the hub writes live events from then on) and ends
    when the subscriber closes. Unsubscribed however it ends, and cut off when the hub
    dropped it but the last write is stuck on a client that stopped reading."""

    def __init__(
        self,
        catch_up: AsyncIterator[ServerSentEvent],
        hub: Hub,
        sub: Subscriber,
        kind: str,
        metrics: Metrics,
    ) -> None:
        # Pings come from the hub (one loop for every connection), not a task per response.
        super().__init__(self._stream(catch_up), ping=0)
        self.hub = hub
        self.metrics = metrics
        self.sub = sub
        self.kind = kind
        self._writer: LiveWriter | None = None

    async def _stream(self, catch_up: AsyncIterator[ServerSentEvent]) -> AsyncIterator[Any]:
        async for message in catch_up:
            yield message
        # Everything yielded so far has been sent: the hub can write after it.
        assert self._writer is not None
        writer = self._writer
        self.sub.go_live(writer.write, chunked=writer.chunked, transport=writer.transport)
        await self.sub.wait_closed()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._writer = live_writer(scope, send, self.raw_headers)
        self.metrics.sse_live_path.labels(self._writer.path).inc()
        ending = _closing_before_the_end(self.sub, send)
        gauge = self.metrics.sse_connections.labels(self.kind)
        gauge.inc()
        try:
            async with anyio.create_task_group() as group:

                async def cut_when_dropped() -> None:
                    await self.sub.wait_closed()
                    await anyio.sleep(DROP_GRACE_S)
                    group.cancel_scope.cancel()

                group.start_soon(cut_when_dropped)
                await super().__call__(scope, receive, ending)
                group.cancel_scope.cancel()
        finally:
            self.hub.unsubscribe(self.sub)
            gauge.dec()


def _closing_before_the_end(sub: Subscriber, send: Send) -> Send:
    """`send`, closing `sub` before the response's last body message goes out: the hub may
    write into the connection itself (gateway.sse.transport), and nothing of this response
    may follow its end on a kept-alive connection."""

    async def ending(message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            sub.close()
        await send(message)

    return ending
