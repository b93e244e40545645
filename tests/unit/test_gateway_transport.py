"""The live writer's seam: which path a response takes, and the transport writer on a real
socket. (What it relies on in uvicorn, on a real server: tests/integration/
test_gateway_transport.py.)"""

from __future__ import annotations

import asyncio
import re
import socket
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from starlette.types import Message, Scope

from gateway.sse import transport as seam
from gateway.sse.subscriber import (
    CHUNKED_PING_FRAME,
    PING_FRAME,
    Outgoing,
    Subscriber,
    chunk,
)
from schemas.models import Event

ROOT = Path(__file__).resolve().parents[2]
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
]
GET: Scope = {"type": "http", "method": "GET"}


async def send(message: Message) -> None:
    pass


def event(entry_id: str) -> Event:
    return Event.from_entry(
        entry_id,
        {
            "event": "job.progress",
            "job_id": "j1",
            "queue": "q",
            "job_type": "sleep",
            "tenant": "acme",
            "status": "running",
            "ts": "1764000000000",
        },
    )


@pytest.fixture
async def connection() -> AsyncIterator[tuple[asyncio.Transport, socket.socket]]:
    """A real transport on this loop, and the socket at the other end (not read unless a
    test reads it)."""
    ours, theirs = socket.socketpair()
    transport, _ = await asyncio.get_running_loop().connect_accepted_socket(asyncio.Protocol, ours)
    assert isinstance(transport, asyncio.Transport)
    try:
        yield transport, theirs
    finally:
        transport.close()
        theirs.close()


def received(peer: socket.socket) -> bytes:
    """What the other end can read now."""
    peer.setblocking(False)
    data = b""
    try:
        while more := peer.recv(1 << 16):
            data += more
    except BlockingIOError:
        pass
    return data


def test_the_verified_range_is_the_one_pyproject_pins() -> None:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in dependencies if d.startswith("uvicorn")]
    low, high = (tuple(map(int, v.split("."))) for v in re.findall(r"[<>]=?([\d.]+)", pin))
    assert (low, high) == seam.VERIFIED_UVICORN
    assert seam.UVICORN_VERIFIED, "the installed uvicorn is outside the range pyproject pins"


def test_only_versions_in_the_verified_range_are_verified() -> None:
    low, high = seam.VERIFIED_UVICORN
    assert seam.verified(low)
    assert not seam.verified(high)
    assert not seam.verified((low[0], low[1] - 1))
    assert not seam.verified(None)


async def test_a_streamed_get_on_a_handed_over_connection_takes_the_transport(
    connection: tuple[asyncio.Transport, socket.socket],
) -> None:
    transport, peer = connection
    with seam.handing_over(transport):
        writer = seam.live_writer(GET, send, SSE_HEADERS)
    assert (writer.path, writer.chunked) == ("transport", True)
    assert writer.write(chunk(b"data: x\r\n\r\n"))
    await asyncio.sleep(0)
    assert received(peer) == b"b\r\ndata: x\r\n\r\n\r\n"


@pytest.mark.parametrize(
    ("scope", "headers", "why"),
    [
        (GET, SSE_HEADERS, "nothing handed over"),
        ({"type": "http", "method": "HEAD"}, SSE_HEADERS, "a HEAD"),
        (GET, [*SSE_HEADERS, (b"content-length", b"10")], "a sized body"),
        (GET, [*SSE_HEADERS, (b"Transfer-Encoding", b"chunked")], "the app's own framing"),
    ],
)
async def test_the_public_path_everywhere_else(
    connection: tuple[asyncio.Transport, socket.socket],
    scope: Scope,
    headers: list[tuple[bytes, bytes]],
    why: str,
) -> None:
    sent: list[Message] = []

    async def recording(message: Message) -> None:
        sent.append(message)

    if why == "nothing handed over":
        writer = seam.live_writer(scope, recording, headers)
    else:
        with seam.handing_over(connection[0]):
            writer = seam.live_writer(scope, recording, headers)
    assert (writer.path, writer.chunked) == ("asgi", False)
    assert writer.write(b"data: x\r\n\r\n")
    assert sent == [{"type": "http.response.body", "body": b"data: x\r\n\r\n", "more_body": True}]


async def test_an_unverified_uvicorn_takes_the_public_path(
    connection: tuple[asyncio.Transport, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(seam, "UVICORN_VERIFIED", False)
    with seam.handing_over(connection[0]):
        assert seam.live_writer(GET, send, SSE_HEADERS).path == "asgi"


async def test_only_tasks_started_while_handing_over_see_the_transport(
    connection: tuple[asyncio.Transport, socket.socket],
) -> None:
    async def seen() -> asyncio.Transport | None:
        return seam.handed_over()

    before = asyncio.create_task(seen())
    with seam.handing_over(connection[0]):
        during = asyncio.create_task(seen())
    after = asyncio.create_task(seen())
    assert [await before, await during, await after] == [None, connection[0], None]
    assert seam.handed_over() is None


async def test_a_client_that_stopped_reading_is_reported_once_the_buffer_is_over_its_mark(
    connection: tuple[asyncio.Transport, socket.socket],
) -> None:
    transport, _ = connection
    transport.set_write_buffer_limits(high=4096)
    write = seam.transport_writer(transport)
    frame = chunk(b"data: " + b"x" * 1000 + b"\r\n\r\n")
    written = 0
    while write(frame):  # the kernel's buffers fill first, then the transport's own
        written += 1
        assert written < 100_000, "never reported"
    assert 4096 < transport.get_write_buffer_size() <= 4096 + len(frame)
    assert not write(frame)  # and stays reported while the client does not read


async def test_a_closing_connection_takes_frames_silently_as_uvicorns_send_does(
    connection: tuple[asyncio.Transport, socket.socket],
) -> None:
    transport, _ = connection
    write = seam.transport_writer(transport)
    transport.close()
    assert write(b"1\r\nx\r\n")


def test_a_chunked_subscriber_writes_frames_and_pings_as_http_chunks() -> None:
    frames: list[bytes] = []
    sub = Subscriber(10, tenant="acme")
    sub.go_live(lambda frame: frames.append(frame) is None, chunked=True)
    out = Outgoing(event("5-0"))
    assert sub.push(out) and sub.ping()
    assert frames == [chunk(out.frame(True)), CHUNKED_PING_FRAME]
    assert chunk(PING_FRAME) == b"a\r\n: ping\r\n\r\n\r\n"
    assert out.frame(True, chunked=True) is out.frame(True, chunked=True)  # encoded once
