"""SSE end to end through a real uvicorn gateway process on real Redis.

Jobs are driven through their states with the producer's worker-side calls (no worker), and
the streams are read with httpx (and one raw socket that never reads).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from conveyor.embedded_redis import EmbeddedRedis
from conveyor.process import ManagedProcess, free_port
from producer import Delivery, Producer
from schemas.keys import CONSUMER_GROUP
from schemas.models import SubmitRequest
from schemas.settings import Settings
from tests.fixtures.processes import conveyor_env, start_gateway

pytestmark = pytest.mark.integration

A = {"Authorization": "Bearer key-a"}
B = {"Authorization": "Bearer key-b"}
BUFFER = 8  # what the hub holds for a client still catching up
DEADLINE_S = 10.0


@dataclass
class Gateway:
    url: str
    queue: str
    process: ManagedProcess


@pytest.fixture(scope="module")
def gateway(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    queue = f"sse-{uuid.uuid4().hex[:8]}"
    port = free_port()
    workdir = tmp_path_factory.mktemp("gateway")
    env = conveyor_env(
        CONVEYOR_REDIS_URL=redis_server.url,
        CONVEYOR_QUEUES=queue,
        CONVEYOR_API_KEYS="key-a=acme,key-b=globex",
        CONVEYOR_TOKEN_SECRET="sse-test-secret",
        CONVEYOR_SSE_SUBSCRIBER_BUFFER=str(BUFFER),
        CONVEYOR_SSE_PING_S="1",
        CONVEYOR_LOG_LEVEL="WARNING",
    )
    process = start_gateway(env, port=port, log_dir=workdir)  # `conveyor gateway`, as deployed
    try:
        yield Gateway(f"http://127.0.0.1:{port}", queue, process)
    finally:
        process.stop()


@pytest.fixture
def producer(
    redis: aioredis.Redis, gateway: Gateway, settings_factory: Callable[..., Settings]
) -> Producer:
    return Producer(redis, settings_factory(queues=[gateway.queue]))


@pytest.fixture
async def http(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=DEADLINE_S) as client:
        yield client


# --- helpers ----------------------------------------------------------------------------


def parse_block(block: str) -> dict[str, str]:
    """One SSE event block (lines without the blank separator) as field -> value."""
    fields: dict[str, str] = {}
    for line in block.splitlines():
        if not line or line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        fields[name] = fields[name] + "\n" + value if name in fields else value
    return fields


async def events(response: httpx.Response) -> AsyncIterator[dict[str, str]]:
    """The events of an SSE response as dicts (`id`, `event`, `data`, `retry`)."""
    lines: list[str] = []
    async for line in response.aiter_lines():
        if line:
            lines.append(line)
            continue
        block = parse_block("\n".join(lines))
        lines = []
        if block:
            yield block


@dataclass
class Reader:
    """Reads one SSE stream in the background; tests wait on what it has seen."""

    received: list[dict[str, str]]
    task: asyncio.Task[None]
    changed: asyncio.Event

    async def until(self, predicate: Any, what: str) -> None:
        async with asyncio.timeout(DEADLINE_S):
            while not predicate(self.received):
                self.changed.clear()
                if self.task.done():
                    if predicate(self.received):
                        return
                    raise AssertionError(f"stream ended before {what}: {self.received}")
                await self.changed.wait()

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def ended(self) -> list[dict[str, str]]:
        async with asyncio.timeout(DEADLINE_S):
            await self.task
        return self.received

    @property
    def ids(self) -> list[str]:
        return [e["id"] for e in self.received if "id" in e]


def read(http: httpx.AsyncClient, path: str, headers: dict[str, str] | None = None) -> Reader:
    received: list[dict[str, str]] = []
    changed = asyncio.Event()

    async def run() -> None:
        async with http.stream("GET", path, headers=headers) as response:
            assert response.status_code == 200, await response.aread()
            assert response.headers["content-type"].startswith("text/event-stream")
            async for event in events(response):
                received.append(event)
                changed.set()
        changed.set()

    return Reader(received, asyncio.create_task(run()), changed)


def key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


async def submit(http: httpx.AsyncClient, headers: dict[str, str] = A, **body: Any) -> Any:
    response = await http.post("/v1/jobs", json={"type": "noop", **body}, headers=headers)
    assert response.status_code == 202, response.text
    return response.json()


async def start(producer: Producer, queue: str, job_id: str) -> Delivery:
    await producer.ensure_group(queue)
    async with asyncio.timeout(DEADLINE_S):
        while True:
            read = await producer.redis.xreadgroup(
                CONSUMER_GROUP, "c1", {producer.keys(queue).jobs: ">"}, count=100
            )
            entries = [(eid, f["job_id"]) for _, rows in read for eid, f in rows]
            mine = [e for e in entries if e[1] == job_id]
            if mine:
                [delivery] = await producer.start(queue, mine, "c1")
                return delivery


async def stream_ids(
    producer: Producer, queue: str, job_id: str, after: str | None = None
) -> list[str]:
    return [e.id for e in await producer.events(queue, job_id, after=after)]


def assert_increasing(ids: list[str]) -> None:
    assert all(key(a) < key(b) for a, b in itertools.pairwise(ids)), ids


# --- tests ------------------------------------------------------------------------------


async def test_snapshot_first_then_live_events_then_the_stream_ends(
    http: httpx.AsyncClient, producer: Producer, gateway: Gateway
) -> None:
    job = await submit(http)
    reader = read(http, f"/v1/jobs/{job['id']}/events", A)
    await reader.until(lambda r: any(e.get("event") == "snapshot" for e in r), "the snapshot")
    assert reader.received[0] == {"retry": "5000"}
    snapshot = reader.received[1]
    assert snapshot["event"] == "snapshot"
    assert snapshot["id"] == job["last_event_id"]
    assert '"status":"queued"' in snapshot["data"]

    delivery = await start(producer, gateway.queue, job["id"])
    await producer.progress(gateway.queue, job["id"], delivery.attempt, 40, "downloading")
    await producer.progress(gateway.queue, job["id"], delivery.attempt, 80, "uploading")
    await producer.succeed(delivery, {"ok": True})
    received = await reader.ended()

    names = [e["event"] for e in received[2:]]
    assert names == ["job.started", "job.progress", "job.progress", "job.succeeded"]
    assert reader.ids[1:] == await stream_ids(
        producer, gateway.queue, job["id"], after=snapshot["id"]
    )
    assert_increasing(reader.ids)


async def test_last_event_id_replays_exactly_what_was_missed(
    http: httpx.AsyncClient, producer: Producer, gateway: Gateway
) -> None:
    job = await submit(http)
    delivery = await start(producer, gateway.queue, job["id"])
    await producer.progress(gateway.queue, job["id"], delivery.attempt, 10, "downloading")
    first_id = job["last_event_id"]  # the client saw job.queued, then lost the connection

    by_header = read(http, f"/v1/jobs/{job['id']}/events", {**A, "Last-Event-ID": first_id})
    by_query = read(http, f"/v1/jobs/{job['id']}/events?last_event_id={first_id}", A)
    for reader in (by_header, by_query):
        await reader.until(lambda r: any(e.get("event") == "job.progress" for e in r), "replay")
    await producer.progress(gateway.queue, job["id"], delivery.attempt, 90, "uploading")
    await producer.fail(delivery, "broken", retryable=False, backoff_ms=0, default_max_attempts=1)

    expected = await stream_ids(producer, gateway.queue, job["id"], after=first_id)
    for reader in (by_header, by_query):
        received = await reader.ended()
        assert all(e.get("event") != "snapshot" for e in received)
        assert reader.ids == expected
        assert received[-1]["event"] == "job.failed"


async def test_a_job_already_over_sends_its_snapshot_and_ends(
    http: httpx.AsyncClient, gateway: Gateway
) -> None:
    job = await submit(http)
    assert (await http.post(f"/v1/jobs/{job['id']}/cancel", headers=A)).status_code == 202
    received = await read(http, f"/v1/jobs/{job['id']}/events", A).ended()
    assert [e.get("event") for e in received] == [None, "snapshot"]
    assert '"status":"cancelled"' in received[1]["data"]


async def test_a_job_ending_while_clients_connect_ends_every_stream_once(
    http: httpx.AsyncClient, producer: Producer, gateway: Gateway
) -> None:
    job = await submit(http)
    delivery = await start(producer, gateway.queue, job["id"])
    # Clients connect while the job finishes: whichever side of the snapshot it lands on,
    # each stream ends with the terminal state once, ids only growing, nothing after it.
    readers = [read(http, f"/v1/jobs/{job['id']}/events", A) for _ in range(8)]
    await producer.progress(gateway.queue, job["id"], delivery.attempt, 50, "working")
    await producer.succeed(delivery, 1)
    final = (await stream_ids(producer, gateway.queue, job["id"]))[-1]
    for reader in readers:
        received = await reader.ended()
        assert reader.ids[-1] == final
        assert_increasing(reader.ids)
        last = received[-1]
        assert last["event"] == "job.succeeded" or '"status":"succeeded"' in last["data"]


async def test_tenants_see_only_their_own_events(http: httpx.AsyncClient, gateway: Gateway) -> None:
    firehose = read(http, f"/v1/events?queue={gateway.queue}", A)
    await firehose.until(lambda r: len(r) >= 1, "the retry block")
    theirs = await submit(http, B)
    mine = await submit(http, A)
    await firehose.until(lambda r: any(mine["id"] in e.get("data", "") for e in r), "my job")
    await firehose.stop()
    assert all(theirs["id"] not in e.get("data", "") for e in firehose.received)
    other = await http.get(f"/v1/jobs/{theirs['id']}/events", headers=A)
    assert other.status_code == 404
    assert (await http.get("/v1/events")).status_code == 401


async def test_the_events_link_works_without_a_header_and_only_for_its_job(
    http: httpx.AsyncClient, gateway: Gateway
) -> None:
    job = await submit(http)
    other = await submit(http)
    assert (await http.post(f"/v1/jobs/{job['id']}/cancel", headers=A)).status_code == 202
    received = await read(http, job["links"]["events"]).ended()
    assert received[1]["event"] == "snapshot"
    token = job["links"]["events"].split("token=")[1]
    wrong = await http.get(f"/v1/jobs/{other['id']}/events?token={token}")
    assert wrong.status_code == 401
    forged = await http.get(f"/v1/jobs/{job['id']}/events?token={token[:-2]}xx")
    assert forged.status_code == 401


async def test_a_stalled_client_is_dropped_with_bounded_memory_and_resumes_losslessly(
    http: httpx.AsyncClient, producer: Producer, gateway: Gateway
) -> None:
    tenant_jobs = producer.keys(gateway.queue).tenant_jobs("acme")
    rss_before = _rss_kb(gateway.process.pid)
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: tiny window
    sock.setblocking(False)
    host, port = gateway.url.removeprefix("http://").split(":")
    await loop.sock_connect(sock, (host, int(port)))
    request = (
        f"GET /v1/events?queue={gateway.queue}&event=job.queued HTTP/1.0\r\n"
        f"Host: {host}\r\nAuthorization: Bearer key-a\r\n\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    first = await loop.sock_recv(sock, 4096)  # headers and the retry block; then stop reading
    assert b" 200 " in first.split(b"\r\n")[0]

    # Far more than the connection's send buffer (CONVEYOR_SSE_SEND_BUFFER_BYTES) and
    # uvicorn's 64 KiB hold.
    job_ids: list[str] = []
    for _ in range(6):
        batch = [SubmitRequest(type="noop", queue=gateway.queue)] * 500
        job_ids += await producer.submit_many(batch, tenant="acme")
    assert await producer.redis.zcard(tenant_jobs) >= len(job_ids)

    # The gateway drops the stalled subscriber and closes the connection: reading now
    # gets what was buffered, then the end of the stream.
    chunks = [first]
    async with asyncio.timeout(DEADLINE_S):
        while chunk := await loop.sock_recv(sock, 65536):
            chunks.append(chunk)
    sock.close()
    body = b"".join(chunks).split(b"\r\n\r\n", 1)[1].decode()
    complete = [parse_block(b) for b in body.replace("\r\n", "\n").split("\n\n")[:-1]]
    seen = [e["id"] for e in complete if e.get("event") == "job.queued"]
    assert 0 < len(seen) < len(job_ids)

    metrics = (await http.get("/metrics")).text
    assert "conveyor_gateway_hub_dropped_subscribers_total 1.0" in metrics
    assert 'conveyor_gateway_sse_connections{stream="firehose"} 0.0' in metrics
    assert _rss_kb(gateway.process.pid) - rss_before < 64 * 1024

    # Resume from the last event it got: exactly the rest, no repeats.
    resumed = read(
        http, f"/v1/events?queue={gateway.queue}&event=job.queued", {**A, "Last-Event-ID": seen[-1]}
    )
    await resumed.until(
        lambda r: sum(1 for e in r if e.get("event") == "job.queued") >= len(job_ids) - len(seen),
        "the rest of the events",
    )
    await resumed.stop()
    rest = [e["id"] for e in resumed.received if e.get("event") == "job.queued"]
    queue_events = await producer.redis.xrange(producer.keys(gateway.queue).events, "-", "+")
    expected = [
        eid for eid, f in queue_events
        if f["event"] == "job.queued" and f["job_id"] in set(job_ids)
    ]  # fmt: skip
    assert seen + rest == expected
    assert_increasing(seen + rest)


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")
