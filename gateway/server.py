"""`serve(app, settings)`: one gateway process under uvicorn (`conveyor gateway`)."""

from __future__ import annotations

import socket

import uvicorn
from fastapi import FastAPI

from gateway.connection_limits import limited_protocol
from schemas.settings import Settings

# SSE responses stay open; on SIGTERM sse-starlette ends them, and this bounds the rest.
GRACEFUL_SHUTDOWN_S = 5


def listening_socket(host: str, port: int, send_buffer_bytes: int) -> socket.socket:
    """The gateway's listening socket, made here rather than by uvicorn so that every
    connection inherits a fixed kernel send buffer. Live SSE events are written straight
    into the connection (gateway.subscriber), so a client that stops reading fills that
    buffer and uvicorn's 64 KiB and is then dropped: a small fixed buffer drops it soon and
    bounds what it pins, where autotuning would let each one hold up to tcp_wmem (4 MiB)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer_bytes)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def serve(app: FastAPI, settings: Settings) -> None:
    config = uvicorn.Config(
        app,
        # What one connection may hold: its headers' size, its time to send them and a body.
        http=limited_protocol(
            settings.max_header_bytes, settings.header_timeout_s, settings.body_timeout_s
        ),
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        proxy_headers=True,
        # Logging is configured by the caller (`conveyor gateway`: JSON lines, see
        # conveyor/logs.py); uvicorn's records propagate to it instead of its own handlers.
        log_config=None,
        access_log=settings.access_log,
    )
    sock = listening_socket(settings.host, settings.port, settings.sse_send_buffer_bytes)
    with sock:
        uvicorn.Server(config).run(sockets=[sock])
