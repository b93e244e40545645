"""How the hub writes a live frame into a response's connection: straight into the
connection's asyncio transport where the server is one this was verified on, else through
the ASGI `send` (the public path).

Through ASGI, each live write is a `send(message)` run to completion by hand
(`direct_writer`): a coroutine per layer between the app and the socket (Starlette's
exception and error middleware, then uvicorn's `RequestResponseCycle.send` and its HTTP
framing). At 10,000 clients those layers took 7 of the gateway's 18 us per delivery, as
much as the socket write itself, which is all the floor does (bench.sse_compare --py-spy).
`transport_writer` frames the bytes as uvicorn would and writes them with one
`transport.write`.

ASGI gives an app no transport, so the server's protocol hands it over: `handing_over`
sets a context variable around uvicorn's `on_headers_complete`, in which uvicorn creates the
request's task. A task runs in a copy of the context it was created in, so the request sees
its own connection's transport and no other's; a pipelined request, whose task the previous
request's task creates, is on the same connection. `live_writer` takes the transport path
only when all of these hold, and the public path otherwise:

- the uvicorn installed is in VERIFIED_UVICORN (the range pyproject.toml pins);
- a transport was handed over: gateway.connection_limits.LimitedProtocol, which
  `conveyor gateway` runs, does; a bare `uvicorn --factory`, the h11 protocol, another ASGI
  server or uvicorn's `reset_contextvars` hand none over;
- the request is a GET, and the response is streamed (no Content-Length, no
  Transfer-Encoding of the app's): uvicorn then frames every body message as one HTTP/1.1
  chunk (`%x\\r\\n` body `\\r\\n`; for HTTP/1.0 requests too) and ends with `0\\r\\n\\r\\n`.

What the transport path relies on in uvicorn, verified on 0.55 (with httptools 0.9, the
protocol LimitedProtocol subclasses) by tests/integration/test_gateway_transport.py, which
runs a real server and reads the bytes on the wire:

- `HttpToolsProtocol.on_headers_complete` creates the request's task synchronously, or
  queues a pipelined request for its predecessor's task to start;
- the chunk framing above;
- uvicorn holds no body bytes of its own: its `send` writes each body message with one
  synchronous `transport.write`, waiting first only while the transport has paused writing.

So frames written here come after whatever uvicorn wrote before them, and the response's
end, which uvicorn writes, after them: the response closes its subscriber before it sends
its last body message (gateway.sse.response), and a closed subscriber writes nothing. Where
uvicorn's send would wait (the transport's buffer over its high-water mark: a client that
stopped reading), `transport_writer` reports the frame unwritten and the subscriber is
dropped, as on the public path. Frames written here bypass any ASGI middleware that would
rewrite a response body; the app has none (its test checks that).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from typing import NamedTuple

from starlette.types import Scope, Send

from gateway.sse.subscriber import Write, direct_writer

log = logging.getLogger("conveyor.gateway.sse")

# (lowest, first unverified) uvicorn (major, minor): keep in step with pyproject.toml's pin.
VERIFIED_UVICORN = ((0, 55), (0, 56))

_connection: ContextVar[asyncio.Transport | None] = ContextVar(
    "conveyor_sse_connection", default=None
)


class LiveWriter(NamedTuple):
    """How the hub writes a response's live frames: `write`, given frames framed as HTTP/1.1
    chunks when `chunked`; `path` names the path taken (for logs and tests); `transport`,
    on the transport path, is the connection `write` writes into."""

    write: Write
    chunked: bool
    path: str
    transport: asyncio.Transport | None = None


def uvicorn_version() -> tuple[int, int] | None:
    try:
        major, minor = importlib.metadata.version("uvicorn").split(".")[:2]
        return int(major), int(minor)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None


def verified(version: tuple[int, int] | None) -> bool:
    low, high = VERIFIED_UVICORN
    return version is not None and low <= version < high


UVICORN_VERIFIED = verified(uvicorn_version())


@contextlib.contextmanager
def handing_over(transport: asyncio.Transport | None) -> Iterator[None]:
    """For the server's protocol: the tasks created in this block (the request's) see
    `transport` as their connection."""
    token = _connection.set(transport)
    try:
        yield
    finally:
        _connection.reset(token)


def handed_over() -> asyncio.Transport | None:
    """The current request's connection, when its server handed it over."""
    return _connection.get()


def transport_writer(transport: asyncio.Transport) -> Write:
    """A `Write` of whole, already framed bytes straight into `transport`."""
    return _TransportWriter(transport).write


class _TransportWriter:
    # A bound method of a slotted object rather than a closure: the hub calls this once per
    # event and client, and a closure's cells and bound methods are objects of their own,
    # each a likely cache miss (0.5 us per delivery at 4,000 clients, bench in process).
    __slots__ = ("high", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        _low, self.high = transport.get_write_buffer_limits()

    def write(self, frame: bytes) -> bool:
        transport = self.transport
        if transport.is_closing():  # gone: the response ends on its disconnect, as after send
            return True
        if transport.get_write_buffer_size() > self.high:  # where uvicorn's send would wait
            return False
        transport.write(frame)
        return True


def live_writer(scope: Scope, send: Send, headers: Iterable[tuple[bytes, bytes]]) -> LiveWriter:
    """The transport path where it is verified to write what uvicorn would (module
    docstring), else the public one over `send`. `headers`: the response's own."""
    transport = handed_over()
    names = {name.lower() for name, _ in headers}
    if not UVICORN_VERIFIED:
        reason = f"uvicorn {uvicorn_version()} is not in the verified range {VERIFIED_UVICORN}"
    elif transport is None:
        reason = "the server's protocol handed no transport over"
    elif scope.get("method") != "GET" or names & {b"content-length", b"transfer-encoding"}:
        reason = "not a streamed GET response"
    else:
        _log_path_once("transport", "SSE live frames go straight into each connection")
        return LiveWriter(transport_writer(transport), True, "transport", transport)
    _log_path_once(reason, f"SSE live frames go through ASGI send: {reason}")
    return LiveWriter(direct_writer(send), chunked=False, path="asgi")


_logged: set[str] = set()


def _log_path_once(key: str, message: str) -> None:
    if key not in _logged:
        _logged.add(key)
        log.info(message)
