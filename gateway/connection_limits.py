"""What one client connection may hold, enforced in uvicorn's HTTP protocol (`serve()`).

    limited_protocol(max_header_bytes, header_timeout_s, body_timeout_s)
        -> the protocol class to give `uvicorn.Config(http=...)`

uvicorn reads a request's headers whole however large they are, and keeps a connection open
for as long as its client takes to send them, or its body: one client dripping bytes holds a
connection and a file descriptor for ever, and a few hundred lock everyone out. Per
connection, this protocol

- answers `431 Request Header Fields Too Large` and closes once a request's head (request
  line and headers) passes `max_header_bytes`, without parsing more of it (a lingering close,
  so that a client still sending reads the 431 rather than a reset);
- closes the connection when a request's head is not complete `header_timeout_s` after the
  connection opened or, on a kept-alive connection, after the request's first bytes came;
- closes it when a request's body is not complete `body_timeout_s` after its headers.

Only the time the client takes to send counts: the clocks stop once the request is in (the
app's work and its response, an SSE stream open for hours included, are never timed here),
and time while uvicorn itself has paused reading (a body waiting on the app, a pipelined
request waiting its turn) is not blamed on the client. An idle kept-alive connection is left
to uvicorn's `timeout_keep_alive`: the header clock starts with the next request's first byte.

What this relies on in uvicorn, verified on uvicorn 0.55 (httptools 0.9):

- `uvicorn.protocols.http.httptools_impl.HttpToolsProtocol`, subclassed, and its constructor
  `(config, server_state, app_state, _loop)`, which is how uvicorn's server instantiates
  whatever class `Config(http=...)` names;
- that it is an `asyncio.Protocol` whose `data_received` feeds the whole chunk to its httptools
  parser synchronously, and that the parser was built with the protocol itself as its
  callback object, so overriding the httptools callbacks `on_message_begin`,
  `on_headers_complete` and `on_message_complete` (then calling uvicorn's) sees each request's
  progress. Nothing else of uvicorn is read or called: no private attribute, the transport and
  loop are taken from asyncio (`connection_made`, `get_running_loop`), and whether uvicorn has
  paused reading is asked of the transport (`is_reading`), where its flow control pauses it.

The same protocol hands each request its connection's transport, for the SSE hub's live
writes: `on_headers_complete`, in which uvicorn creates the request's task, runs inside
`gateway.sse.transport.handing_over` (that module says what it relies on).

Without httptools (an optional uvicorn dependency) `limited_protocol` logs a warning and
returns "auto": uvicorn's default protocol, without these limits.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, ClassVar, cast

from uvicorn.config import Config
from uvicorn.server import ServerState

from gateway.sse.transport import handing_over

log = logging.getLogger("conveyor.gateway")

_missing: ImportError | None = None
try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError as exc:  # httptools is not installed: see limited_protocol
    _missing = exc
    HttpToolsProtocol = asyncio.Protocol  # type: ignore[misc,assignment]  # never instantiated


def limited_protocol(
    max_header_bytes: int, header_timeout_s: float, body_timeout_s: float
) -> type[asyncio.Protocol] | str:
    """A `HttpToolsProtocol` subclass enforcing these limits, for `uvicorn.Config(http=...)`
    (which takes a class, not any callable: hence a class per setting rather than a partial)."""
    if _missing is not None:
        log.warning(
            "httptools is not available (%s): the gateway runs on uvicorn's default HTTP "
            "protocol without its header size and header/body timeout limits",
            _missing,
        )
        return "auto"
    limits = {
        "max_header_bytes": max_header_bytes,
        "header_timeout_s": header_timeout_s,
        "body_timeout_s": body_timeout_s,
    }
    return cast(type[asyncio.Protocol], type("LimitedProtocol", (LimitedProtocol,), limits))


class LimitedProtocol(HttpToolsProtocol):
    max_header_bytes: ClassVar[int] = 64 * 1024
    header_timeout_s: ClassVar[float] = 10.0
    body_timeout_s: ClassVar[float] = 30.0

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._conn: asyncio.Transport | None = None
        self._in_head = True  # between requests or in one's head: not yet its headers complete
        self._in_body = False  # after a request's headers, before its end
        self._head_bytes = 0  # received of the current head
        self._heads = 0  # heads completed on this connection
        self._rejected = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._conn = transport
        super().connection_made(transport)
        # A connection that never sends a byte holds its descriptor as well as a slow one.
        self._head_timer = self._arm(self.header_timeout_s, "headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._rejected:  # lingering after a 431: dropped unread
            return
        if not self._in_head:
            self._feed(data)
            return
        if self._head_timer is None:  # the first bytes after a kept-alive request
            self._head_timer = self._arm(self.header_timeout_s, "headers")
        room = self.max_header_bytes - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            self._feed(data)
            return
        # Feed no more than the limit allows: either the head ends within it, and the rest
        # is body or the next request, or it is too large and the rest is never parsed.
        heads = self._heads
        self._head_bytes += room
        if room:
            self._feed(data[:room])
        if self._heads == heads:
            self._reject_head()
        elif self._still_ours():
            # (Should a pipelined request have begun within data[:room], those first bytes of
            # its head go uncounted: the bound is then the limit plus one read.)
            self.data_received(data[room:])

    # httptools parser callbacks (uvicorn's parser calls these on the protocol)

    def on_message_begin(self) -> None:
        if self._head_timer is None:  # a pipelined request beginning within the same chunk
            self._head_timer = self._arm(self.header_timeout_s, "headers")
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._heads += 1
        self._in_head = False
        self._in_body = True
        self._cancel(self._head_timer)
        self._head_timer = None
        # uvicorn creates the request's task in here: it sees this connection's transport
        # (gateway.sse.transport, for the hub's live writes).
        with handing_over(self._conn):
            super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        self._in_head = True
        self._head_bytes = 0
        self._cancel(self._body_timer)
        self._body_timer = None
        super().on_message_complete()

    # internals

    def _feed(self, data: bytes) -> None:
        super().data_received(data)
        if not self._still_ours():  # upgraded to another protocol, or closed by uvicorn
            self._cancel_timers()
        elif self._in_body and self._body_timer is None:
            # Set here rather than on headers complete: a body that came with its headers,
            # as almost all do, never needs a timer.
            self._body_timer = self._arm(self.body_timeout_s, "body")

    def _still_ours(self) -> bool:
        conn = self._conn
        return conn is not None and not conn.is_closing() and conn.get_protocol() is self

    def _arm(self, delay_s: float, part: str) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_later(delay_s, self._expired, delay_s, part)

    def _expired(self, delay_s: float, part: str) -> None:
        conn = self._conn
        if conn is None or conn.is_closing():
            return
        if self._rejected:  # the end of a lingering close
            conn.close()
            return
        if not conn.is_reading():
            # uvicorn paused reading (flow control, pipelining): the wait is ours, not the
            # client's. Check again later.
            timer = self._arm(delay_s, part)
            if part == "headers":
                self._head_timer = timer
            else:
                self._body_timer = timer
            return
        if part == "headers":
            self._head_timer = None
        else:
            self._body_timer = None
        log.info(
            "closed a connection from %s: request %s not complete within %ss",
            _peer(conn),
            part,
            delay_s,
        )
        conn.close()

    def _reject_head(self) -> None:
        self._rejected = True
        conn = self._conn
        if conn is None or conn.is_closing():
            return
        log.info(
            "refused a request from %s: headers over %d bytes", _peer(conn), self.max_header_bytes
        )
        body = json.dumps(
            {
                "error": "headers_too_large",
                "message": f"request headers are over {self.max_header_bytes} bytes",
            },
            separators=(",", ":"),
        ).encode()
        head = (
            "HTTP/1.1 431 Request Header Fields Too Large\r\n"
            "content-type: application/json\r\n"
            f"content-length: {len(body)}\r\n"
            "connection: close\r\n"
            "\r\n"
        ).encode()
        conn.write(head + body)
        if not conn.can_write_eof():
            conn.close()
            return
        # A lingering close: closing with the client's bytes unread would reset the
        # connection, and the client could lose the 431 unread. Half-close instead, and drop
        # what still comes until the client closes its side or its header time is up.
        conn.write_eof()
        if self._head_timer is None:
            self._head_timer = self._arm(self.header_timeout_s, "headers")

    def _cancel_timers(self) -> None:
        self._cancel(self._head_timer)
        self._cancel(self._body_timer)
        self._head_timer = self._body_timer = None

    @staticmethod
    def _cancel(timer: asyncio.TimerHandle | None) -> None:
        if timer is not None:
            timer.cancel()


def _peer(conn: asyncio.Transport) -> str:
    peer = conn.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "?"
