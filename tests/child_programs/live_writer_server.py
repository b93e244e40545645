"""A uvicorn server (uvloop, as the gateway runs) with a tiny app that shows the live writer's
seam (gateway.sse.transport) on the wire, for tests/integration/test_gateway_transport.py.

    python -m tests.child_programs.live_writer_server PORT limited|httptools

`limited`: the gateway's protocol (gateway.connection_limits), which hands each request its
connection; `httptools`: uvicorn's own, which hands nothing over.

- `GET /whoami`: the peer address of the connection handed over to this request, as JSON
  (`null` when none was), so a client can check that it is its own.
- `GET /stream?n=N`: a streamed `text/event-stream` response as the gateway's: a `retry:`
  block through ASGI send, then N frames through `live_writer`, then the end through send.
  Header `x-live-path` names the path the frames took.
"""

from __future__ import annotations

import json
import socket
import sys
from urllib.parse import parse_qs

import uvicorn
from starlette.types import Receive, Scope, Send

from gateway.connection_limits import limited_protocol
from gateway.sse.subscriber import chunk
from gateway.sse.transport import handed_over, live_writer

SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8")]


def frame(i: int) -> bytes:
    return f'id: {i}-0\r\nevent: job.progress\r\ndata: {{"n": {i}}}\r\n\r\n'.encode()


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["path"] == "/whoami":
        transport = handed_over()
        body = json.dumps(transport and list(transport.get_extra_info("peername"))).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    n = int(parse_qs(scope["query_string"].decode()).get("n", ["3"])[0])
    writer = live_writer(scope, send, SSE_HEADERS)
    headers = [*SSE_HEADERS, (b"x-live-path", writer.path.encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"retry: 5000\r\n\r\n", "more_body": True})
    for i in range(n):
        assert writer.write(chunk(frame(i)) if writer.chunked else frame(i))
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def main(port: int, protocol: str) -> None:
    http = limited_protocol(64 * 1024, 10.0, 30.0) if protocol == "limited" else "httptools"
    config = uvicorn.Config(app, http=http, log_level="warning", loop="uvloop")
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
