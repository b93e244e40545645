"""What one client connection may hold, through a real `conveyor gateway` process on real Redis
(gateway.connection_limits): headers over CONVEYOR_MAX_HEADER_BYTES are answered 431, headers
or a body sent too slowly (CONVEYOR_HEADER_TIMEOUT_S, CONVEYOR_BODY_TIMEOUT_S) get the
connection closed, and other clients are served all the while. An SSE response and an idle
kept-alive connection are not timed.

The misbehaving clients are raw sockets; every wait is a read with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from conveyor.embedded_redis import EmbeddedRedis
from conveyor.process import ManagedProcess, free_port
from schemas.settings import Settings
from tests.fixtures.processes import HOST, conveyor_env, start_gateway

pytestmark = pytest.mark.integration

A = {"Authorization": "Bearer key-a"}
TIMEOUT_S = 1.0  # the header and the body timeout of the gateway under test
SLACK_S = 2.0  # a closed connection must be seen within its timeout plus this
DEADLINE_S = 10.0
PING_S = 0.25
MAX_HEADER_BYTES = Settings.model_fields["max_header_bytes"].default  # the documented default


@dataclass
class Gateway:
    port: int
    queue: str
    process: ManagedProcess

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


def _start(
    redis_server: EmbeddedRedis, workdir: Path, header_timeout_s: float = TIMEOUT_S
) -> Gateway:
    queue = f"limits-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = conveyor_env(
        CONVEYOR_REDIS_URL=redis_server.url,
        CONVEYOR_QUEUES=queue,
        CONVEYOR_API_KEYS="key-a=acme",
        CONVEYOR_TOKEN_SECRET="limits-test-secret",
        CONVEYOR_HEADER_TIMEOUT_S=str(header_timeout_s),
        CONVEYOR_BODY_TIMEOUT_S=str(TIMEOUT_S),
        CONVEYOR_SSE_PING_S=str(PING_S),
        CONVEYOR_LOG_LEVEL="WARNING",
    )
    return Gateway(port, queue, start_gateway(env, port=port, log_dir=workdir))


@pytest.fixture(scope="module")
def gateway(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    gw = _start(redis_server, tmp_path_factory.mktemp("gateway"))
    try:
        yield gw
    finally:
        gw.process.stop()


@pytest.fixture
async def http(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=DEADLINE_S) as client:
        yield client


# --- raw connections --------------------------------------------------------------------


@dataclass
class Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    since: float  # loop time the connection opened, or its clock was last restarted

    def elapsed(self) -> float:
        return asyncio.get_running_loop().time() - self.since

    async def send(self, data: bytes) -> None:
        """Write `data`; the server closing the connection meanwhile is not an error here."""
        with contextlib.suppress(ConnectionError):
            self.writer.write(data)
            await self.writer.drain()

    async def until_closed(self, deadline_s: float) -> bytes:
        """All the server sends until it closes the connection (EOF or reset), within
        `deadline_s`."""
        chunks: list[bytes] = []
        async with asyncio.timeout(deadline_s):
            with contextlib.suppress(ConnectionResetError):
                while chunk := await self.reader.read(65536):
                    chunks.append(chunk)
        return b"".join(chunks)

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        """One response with a Content-Length, read off a connection that stays open."""
        async with asyncio.timeout(DEADLINE_S):
            head = await self.reader.readuntil(b"\r\n\r\n")
            status, headers, _ = parse(head)
            body = await self.reader.readexactly(int(headers["content-length"]))
        return status, headers, body

    def close(self) -> None:
        self.writer.close()


@contextlib.asynccontextmanager
async def connect(gw: Gateway) -> AsyncIterator[Conn]:
    reader, writer = await asyncio.open_connection(HOST, gw.port)
    conn = Conn(reader, writer, asyncio.get_running_loop().time())
    try:
        yield conn
    finally:
        conn.close()


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def get(path: str, head_bytes: int | None = None, connection: str = "close") -> bytes:
    """A GET whose head (request line to blank line) is `head_bytes` long, padded by a header."""
    start = f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n".encode()
    end = f"Connection: {connection}\r\n\r\n".encode()
    if head_bytes is None:
        return start + end
    pad = b"X-Pad: " + b"a" * (head_bytes - len(start) - len(end) - len(b"X-Pad: \r\n")) + b"\r\n"
    request = start + pad + end
    assert len(request) == head_bytes
    return request


async def served(http: httpx.AsyncClient) -> None:
    """Another client gets an answer."""
    response = await http.get("/healthz")
    assert response.status_code == 200, response.text


# --- tests ------------------------------------------------------------------------------


async def test_a_1mb_header_is_answered_431_while_others_are_served(
    gateway: Gateway, http: httpx.AsyncClient
) -> None:
    async with connect(gateway) as conn:
        sending = asyncio.create_task(conn.send(get("/healthz", head_bytes=1024 * 1024)))
        await served(http)
        raw = await conn.until_closed(DEADLINE_S)
        await sending
    status, headers, body = parse(raw)
    assert status == 431, raw[:200]
    assert headers["connection"] == "close"
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    assert json.loads(body) == {
        "error": "headers_too_large",
        "message": f"request headers are over {MAX_HEADER_BYTES} bytes",
    }
    await served(http)


async def test_headers_up_to_the_limit_are_served_and_one_byte_more_is_431(
    gateway: Gateway, http: httpx.AsyncClient
) -> None:
    async with connect(gateway) as conn:
        await conn.send(get("/healthz", head_bytes=MAX_HEADER_BYTES))
        status, _, body = parse(await conn.until_closed(DEADLINE_S))
    assert (status, json.loads(body)) == (200, {"status": "ok"})

    # A body that comes in the same write as a head just under the limit is not head.
    payload = json.dumps({"type": "noop", "payload": {"pad": "b" * 4000}}).encode()
    head = get("/v1/jobs", head_bytes=MAX_HEADER_BYTES - 200).replace(b"GET", b"POST", 1)
    extra = (
        f"Authorization: Bearer key-a\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode()
    head = head.removesuffix(b"\r\n") + extra
    assert MAX_HEADER_BYTES - 200 < len(head) <= MAX_HEADER_BYTES
    async with connect(gateway) as conn:
        await conn.send(head + payload)
        status, _, body = parse(await conn.until_closed(DEADLINE_S))
    assert status == 202, body
    assert json.loads(body)["status"] == "queued"

    async with connect(gateway) as conn:
        await conn.send(get("/healthz", head_bytes=MAX_HEADER_BYTES + 1))
        status, _, body = parse(await conn.until_closed(DEADLINE_S))
    assert status == 431, body
    await served(http)


async def test_a_slow_drip_client_is_closed_at_the_header_timeout_while_others_are_served(
    gateway: Gateway, http: httpx.AsyncClient
) -> None:
    request = get("/healthz", head_bytes=200)  # 40 s to send at this pace

    async with connect(gateway) as conn:

        async def drip() -> None:
            for byte in request:
                await conn.send(bytes([byte]))
                await asyncio.sleep(0.2)  # the client's pace, not a wait for anything

        dripping = asyncio.create_task(drip())
        try:
            await served(http)
            raw = await conn.until_closed(TIMEOUT_S + SLACK_S)
            elapsed = conn.elapsed()
            await served(http)
        finally:
            dripping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dripping
    assert raw == b""
    assert TIMEOUT_S * 0.9 <= elapsed <= TIMEOUT_S + SLACK_S


async def test_a_silent_connection_is_closed_at_the_header_timeout(gateway: Gateway) -> None:
    async with connect(gateway) as conn:
        assert await conn.until_closed(TIMEOUT_S + SLACK_S) == b""
        assert conn.elapsed() >= TIMEOUT_S * 0.9


async def test_a_body_not_sent_in_full_is_cut_at_the_body_timeout_while_others_are_served(
    gateway: Gateway, http: httpx.AsyncClient
) -> None:
    head = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer key-a\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    ).encode()
    async with connect(gateway) as conn:
        await conn.send(head + b'{"type": "noop", ')  # 17 of the 100 bytes announced
        conn.since = asyncio.get_running_loop().time()
        await served(http)
        raw = await conn.until_closed(TIMEOUT_S + SLACK_S)
        assert raw == b""
        assert TIMEOUT_S * 0.9 <= conn.elapsed() <= TIMEOUT_S + SLACK_S
    await served(http)


async def test_an_sse_response_outlives_both_timeouts_which_cut_a_stalled_body_meanwhile(
    gateway: Gateway, http: httpx.AsyncClient
) -> None:
    submitted = await http.post("/v1/jobs", json={"type": "noop"}, headers=A)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    stalled_head = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer key-a\r\n"
        "Content-Length: 100\r\n\r\n{"
    ).encode()
    hold_s = 3 * TIMEOUT_S  # past the header and the body timeout, with room

    loop = asyncio.get_running_loop()
    lines: list[str] = []
    async with (
        connect(gateway) as stalled,
        http.stream("GET", f"/v1/jobs/{job_id}/events", headers=A) as events,
    ):
        assert events.status_code == 200
        await stalled.send(stalled_head)
        cut = asyncio.create_task(stalled.until_closed(TIMEOUT_S + SLACK_S))
        opened = loop.time()
        cancelled = False
        async with asyncio.timeout(hold_s + DEADLINE_S):
            async for line in events.aiter_lines():  # the pings keep these coming
                lines.append(line)
                if not cancelled and loop.time() - opened > hold_s:
                    assert cut.done(), "the stalled body is still held"
                    cancel = await http.post(f"/v1/jobs/{job_id}/cancel", headers=A)
                    assert cancel.status_code == 202, cancel.text
                    cancelled = True
        assert await cut == b""
    # The stream ran for the whole hold and ended on the job's end, not on a timeout.
    assert cancelled
    assert "event: snapshot" in lines
    assert lines.count(": ping") >= hold_s / PING_S / 2  # it kept flowing all along
    assert "event: job.cancelled" in lines


async def test_a_kept_alive_connection_idles_untimed_then_times_its_next_request(
    gateway: Gateway,
) -> None:
    async with connect(gateway) as conn:
        await conn.send(get("/healthz", connection="keep-alive"))
        assert (await conn.response())[0] == 200

        # Idle longer than the header timeout (uvicorn's keep-alive timeout is 5 s): open.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(2 * TIMEOUT_S):
                await conn.reader.read(1)
        await conn.send(get("/healthz", connection="keep-alive"))
        assert (await conn.response())[0] == 200

        # The next request's first bytes start its header clock.
        await conn.send(b"GET /healthz HTTP/1.1\r\nHo")
        conn.since = asyncio.get_running_loop().time()
        assert await conn.until_closed(TIMEOUT_S + SLACK_S) == b""
        assert conn.elapsed() >= TIMEOUT_S * 0.9


async def test_idle_connections_filling_the_fd_limit_are_closed_and_others_get_in(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    """The issue's lockout: a gateway at its file descriptor limit with connections that send
    nothing. They are closed at the header timeout, and a new client is served."""
    header_timeout_s = 2.0
    gw = _start(redis_server, tmp_path, header_timeout_s=header_timeout_s)
    try:
        pid = gw.process.pid
        open_fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
        _, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (open_fds + 20, hard))

        async with contextlib.AsyncExitStack() as stack:
            holders = [await stack.enter_async_context(connect(gw)) for _ in range(60)]
            # Locked out: a new client gets no answer while they hold every descriptor.
            async with httpx.AsyncClient(base_url=gw.url, timeout=header_timeout_s / 2) as http:
                with pytest.raises(httpx.TransportError):
                    await http.get("/healthz")
            # Those the gateway could not take are closed at once (or wait in the backlog);
            # the rest it holds until the header timeout: wait for every one to be closed.
            for conn in holders:
                assert await conn.until_closed(header_timeout_s + SLACK_S) == b""
            assert max(conn.elapsed() for conn in holders) >= header_timeout_s * 0.9
        async with httpx.AsyncClient(base_url=gw.url, timeout=DEADLINE_S) as http:
            await served(http)
    finally:
        gw.process.stop()
