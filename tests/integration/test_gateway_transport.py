"""The live writer's seam (gateway.sse.transport) on real uvicorn servers: what it relies on
in the pinned uvicorn, read off the wire, and the public path it falls back to.

A tiny app (tests/child_programs/live_writer_server.py) runs under uvicorn with the
gateway's protocol, which hands each request its connection, and under uvicorn's own, which
does not; then the gateway itself, as `conveyor gateway` runs it and as a bare
`uvicorn --factory`, streams a job's events both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import h11
import httpx
import pytest
import redis.asyncio as aioredis

from conveyor.embedded_redis import EmbeddedRedis
from conveyor.process import ManagedProcess, free_port, port_open, wait_until
from producer import Producer
from schemas.keys import CONSUMER_GROUP
from schemas.settings import Settings
from tests.child_programs.live_writer_server import frame
from tests.fixtures.processes import HOST, REPO, conveyor_env, start_gateway

pytestmark = pytest.mark.integration

DEADLINE_S = 10.0
RETRY = b"retry: 5000\r\n\r\n"


@contextlib.contextmanager
def serving(protocol: str, workdir: Path) -> Iterator[int]:
    port = free_port()
    argv = [sys.executable, "-m", "tests.child_programs.live_writer_server", str(port), protocol]
    process = ManagedProcess(
        f"live-writer-{protocol}", argv, cwd=REPO, log_path=workdir / f"{protocol}.log"
    ).start()
    try:
        wait_until(lambda: port_open(HOST, port) or not process.alive(), DEADLINE_S, "server")
        assert process.alive(), process.log_tail()
        yield port
    finally:
        process.stop()


@pytest.fixture(scope="module", params=["limited", "httptools"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, int]]:
    """(protocol, port): the app under the gateway's protocol, then under uvicorn's own."""
    with serving(request.param, tmp_path_factory.mktemp("live-writer")) as port:
        yield request.param, port


@contextlib.asynccontextmanager
async def connected(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def exchange(
    conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: str
) -> tuple[h11.Response, bytes]:
    """One HTTP/1.1 request and its whole response, read with h11 (which checks the
    framing); the connection is then ready for the next request."""
    writer.write(conn.send(h11.Request(method="GET", target=target, headers=[("Host", HOST)])))
    writer.write(conn.send(h11.EndOfMessage()))
    response: h11.Response | None = None
    body = b""
    async with asyncio.timeout(DEADLINE_S):
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise AssertionError(f"unexpected {event!r}")
    assert response is not None
    if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
        conn.start_next_cycle()
    return response, body


def header(response: h11.Response, name: bytes) -> bytes:
    return dict(response.headers)[name]


def expected_stream(n: int) -> bytes:
    return RETRY + b"".join(frame(i) for i in range(n))


async def test_live_frames_reach_the_wire_framed_as_uvicorns_own_and_the_connection_lives_on(
    server: tuple[str, int],
) -> None:
    protocol, port = server
    async with connected(port) as (reader, writer):
        conn = h11.Connection(h11.CLIENT)
        for n in (3, 0, 50):  # one kept-alive connection, streams one after another
            response, body = await exchange(conn, reader, writer, f"/stream?n={n}")
            assert response.status_code == 200
            assert header(response, b"transfer-encoding") == b"chunked"
            path = b"transport" if protocol == "limited" else b"asgi"
            assert header(response, b"x-live-path") == path
            assert body == expected_stream(n)
        response, body = await exchange(conn, reader, writer, "/whoami")
        assert response.status_code == 200


async def test_an_http_1_0_stream_is_framed_as_uvicorn_frames_it(server: tuple[str, int]) -> None:
    """uvicorn answers HTTP/1.0 with a chunked body too, then closes: the same bytes come
    whichever path the frames took."""
    _, port = server
    async with connected(port) as (reader, writer):
        writer.write(f"GET /stream?n=2 HTTP/1.0\r\nHost: {HOST}\r\n\r\n".encode())
        async with asyncio.timeout(DEADLINE_S):
            raw = await reader.read()  # to the server's close
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    chunks, rest = [], body
    while True:
        size, _, rest = rest.partition(b"\r\n")
        length = int(size, 16)
        chunks.append(rest[:length])
        assert rest[length : length + 2] == b"\r\n"
        rest = rest[length + 2 :]
        if not length:
            break
    assert rest == b""
    assert b"".join(chunks) == expected_stream(2)


async def test_each_request_is_handed_its_own_connection(server: tuple[str, int]) -> None:
    """Concurrent connections, kept-alive requests, and pipelined ones (whose task the
    previous request's starts) each see the transport of the connection they came on."""
    protocol, port = server

    async def one_connection() -> None:
        async with connected(port) as (reader, writer):
            own = list(writer.get_extra_info("sockname"))
            expected = own if protocol == "limited" else None
            request = f"GET /whoami HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
            writer.write(request)
            writer.write(request * 3)  # the last three pipelined, in one segment
            async with asyncio.timeout(DEADLINE_S):
                for _ in range(4):
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = next(
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    )
                    assert json.loads(await reader.readexactly(length)) == expected

    await asyncio.gather(*(one_connection() for _ in range(20)))


# --- the gateway itself ---------------------------------------------------------------


@pytest.fixture(scope="module", params=["conveyor gateway", "uvicorn --factory"])
def gateway(
    request: pytest.FixtureRequest,
    redis_server: EmbeddedRedis,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, str, str]]:
    """(url, queue, the live path expected): as deployed, then the bare app, whose uvicorn
    protocol hands no connection over."""
    queue = f"transport-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = conveyor_env(
        CONVEYOR_REDIS_URL=redis_server.url,
        CONVEYOR_QUEUES=queue,
        CONVEYOR_API_KEYS="key-a=acme",
        CONVEYOR_TOKEN_SECRET="transport-test-secret",
        CONVEYOR_LOG_LEVEL="WARNING",
    )
    bare = request.param == "uvicorn --factory"
    process = start_gateway(
        env,
        port=port,
        log_dir=tmp_path_factory.mktemp("gateway"),
        uvicorn_log_level="warning" if bare else None,
    )
    try:
        yield f"http://{HOST}:{port}", queue, "asgi" if bare else "transport"
    finally:
        process.stop()


async def test_the_gateway_streams_a_job_to_its_end_on_either_path(
    gateway: tuple[str, str, str],
    redis: aioredis.Redis,
    settings_factory: Callable[..., Settings],
) -> None:
    url, queue, path = gateway
    producer = Producer(redis, settings_factory(queues=[queue]))
    auth = {"Authorization": "Bearer key-a"}
    async with httpx.AsyncClient(base_url=url, timeout=DEADLINE_S) as http:
        job = (await http.post("/v1/jobs", json={"type": "noop"}, headers=auth)).json()
        lines: list[str] = []
        seen = asyncio.Event()

        async def read() -> None:
            async with http.stream("GET", job["links"]["events"]) as response:
                async for line in response.aiter_lines():
                    lines.append(line)
                    seen.set()

        reader = asyncio.create_task(read())
        async with asyncio.timeout(DEADLINE_S):
            while "event: snapshot" not in lines:
                seen.clear()
                await seen.wait()
        await producer.ensure_group(queue)
        reply = await redis.xreadgroup(CONSUMER_GROUP, "c1", {producer.keys(queue).jobs: ">"})
        entries = [(eid, f["job_id"]) for _, rows in reply for eid, f in rows]
        (delivery,) = await producer.start(queue, entries, "c1")
        await producer.progress(queue, job["id"], delivery.attempt, 50.0, stage="half")
        await producer.succeed(delivery, {"ok": True})
        async with asyncio.timeout(DEADLINE_S):
            await reader  # the stream ends after the terminal event
        metrics = (await http.get("/metrics")).text

    kinds = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    assert kinds == ["snapshot", "job.started", "job.progress", "job.succeeded"]
    ids = [line.removeprefix("id: ") for line in lines if line.startswith("id: ")]
    assert ids == await _ids(producer, queue, job["id"])
    assert f'conveyor_gateway_sse_live_path_total{{path="{path}"}} 1.0' in metrics


async def _ids(producer: Producer, queue: str, job_id: str) -> list[str]:
    return [e.id for e in await producer.events(queue, job_id)]
