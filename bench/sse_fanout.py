"""SSE fan-out: N concurrent firehose clients on one gateway process.

    .venv/bin/python -m bench.sse_fanout [--clients 1000] [--progress 8]

Starts its own redis-server and one gateway process as `conveyor gateway` runs it
(bench.http_submit.gateway, as_deployed: its protocol hands the hub each connection, see
gateway.sse.transport; a bare `uvicorn --factory` would measure the ASGI fallback), raises
RLIMIT_NOFILE (soft to hard, which the gateway child inherits), opens `--clients` SSE
connections to the tenant's firehose, then drives one job through its states with the
producer (submit, start, `--progress` progress reports, succeed) as a worker would.

Each transition is sent only once every client has received the previous one (plus the
gateway's per-client progress throttle interval), so what is measured is fan-out latency,
not a backlog: for every event and client, receipt time minus the time taken just before
the producer call that ran the XADD. Both clocks are this machine's. The clients are
`asyncio.Protocol`s that only count complete SSE blocks carrying `data:`, so the client side
costs little; it still shares the machine's cores with the gateway and Redis, and a
receipt time includes this process's own event-loop delay.

Gateway RSS per connection is VmRSS after every client is connected minus VmRSS before,
over the number of clients.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import redis.asyncio as aioredis

from bench.http_submit import API_KEY, QUEUE, TENANT, Gateway, cpu_s, gateway, percentile
from producer import Delivery, Producer
from schemas import CONSUMER_GROUP, Settings, SubmitRequest

CONNECT_CONCURRENCY = 200
CONNECT_TIMEOUT_S = 120.0
EVENT_TIMEOUT_S = 60.0
# The gateway holds a client's progress event that comes sooner than this after the last
# (gateway.app.PROGRESS_INTERVAL_S); waiting it out keeps the throttle out of the figures.
THROTTLE_GAP_S = 0.25


def raise_nofile(needed: int) -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (and the hard one too, as root, if short)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            return needed
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Fanout:
    """What every client has received: per event index, the receipt times."""

    def __init__(self, clients: int) -> None:
        self.clients = clients
        self.connected = 0
        self.all_connected = asyncio.Event()
        self.received: list[list[float]] = []
        self.complete: list[asyncio.Event] = []
        self.lost = 0
        self.refused: str | None = None

    def expect(self) -> int:
        self.received.append([])
        self.complete.append(asyncio.Event())
        return len(self.received) - 1

    def got(self, index: int, at: float) -> None:
        if index >= len(self.received):
            return  # a stray event (none expected): ignored rather than misattributed
        times = self.received[index]
        times.append(at)
        if len(times) == self.clients:
            self.complete[index].set()


class SseClient(asyncio.Protocol):
    """One firehose connection. HTTP/1.0, so the body is not chunked: SSE blocks are
    separated by a blank line, and the first one (`retry:`) means the stream is open."""

    def __init__(self, fanout: Fanout, request: bytes) -> None:
        self.fanout = fanout
        self.request = request
        self.buffer = b""
        self.opened = False
        self.events = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            block, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            if not self.opened:
                if block.startswith(b"HTTP/") and b" 200 " not in block.split(b"\r\n", 1)[0]:
                    self.fanout.refused = block[:200].decode(errors="replace")
                    assert self.transport is not None
                    self.transport.close()
                    return
                if b"retry:" in block:
                    self.opened = True
                    self.fanout.connected += 1
                    if self.fanout.connected == self.fanout.clients:
                        self.fanout.all_connected.set()
                continue
            if b"\ndata:" in block or block.startswith(b"data:"):
                self.fanout.got(self.events, now)
                self.events += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.fanout.lost += 1


async def connect_all(gw: Gateway, fanout: Fanout) -> list[asyncio.Transport]:
    async with httpx.AsyncClient(base_url=gw.url) as http:
        page = await http.get(
            "/v1/jobs", params={"limit": 1}, headers={"Authorization": f"Bearer {API_KEY}"}
        )
        page.raise_for_status()
        path = page.json()["links"]["events"]
    host, port = gw.url.removeprefix("http://").split(":")
    request = (
        f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    transports: list[asyncio.Transport] = []

    async def one() -> None:
        async with gate:
            transport, _ = await loop.create_connection(
                lambda: SseClient(fanout, request), host, int(port)
            )
            transports.append(transport)

    await asyncio.gather(*(one() for _ in range(fanout.clients)))
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            await fanout.all_connected.wait()
    except TimeoutError:
        raise SystemExit(
            f"only {fanout.connected}/{fanout.clients} streams opened; refused: {fanout.refused}"
        ) from None
    return transports


class Job:
    """One job driven through its states with the producer's worker-side calls."""

    def __init__(self, producer: Producer) -> None:
        self.producer = producer
        self.delivery: Delivery | None = None
        self.job_id = ""

    async def submit(self) -> None:
        request = SubmitRequest(type="sleep", queue=QUEUE, payload={"seconds": 1})
        self.job_id = (await self.producer.submit(request, tenant=TENANT)).job_id

    async def start(self) -> None:
        reply = await self.producer.redis.xreadgroup(
            CONSUMER_GROUP, "bench", {self.producer.keys(QUEUE).jobs: ">"}, count=10
        )
        entries = [(eid, f["job_id"]) for _, rows in reply for eid, f in rows]
        (self.delivery,) = await self.producer.start(QUEUE, entries, "bench")

    async def progress(self, percent: float) -> None:
        assert self.delivery is not None
        d = self.delivery
        await self.producer.progress(d.queue, d.job_id, d.attempt, percent, stage="working")

    async def succeed(self) -> None:
        assert self.delivery is not None
        await self.producer.succeed(self.delivery, {"ok": True})


async def run(clients: int, progress_steps: int) -> None:
    limit = raise_nofile(clients + 1000)
    if limit < clients + 100:
        raise SystemExit(f"RLIMIT_NOFILE is {limit}: too low for {clients} clients")
    with (
        tempfile.TemporaryDirectory(prefix="bench-sse-") as tmp,
        gateway(Path(tmp), as_deployed=True) as gw,
    ):
        redis = aioredis.Redis.from_url(gw.redis_url, decode_responses=True)
        producer = Producer(redis, Settings(redis_url=gw.redis_url, queues=[QUEUE]))
        await producer.ensure_group(QUEUE)
        fanout = Fanout(clients)
        rss_before = rss_kib(gw.process.pid)
        started = time.perf_counter()
        transports = await connect_all(gw, fanout)
        connect_s = time.perf_counter() - started
        rss_after = rss_kib(gw.process.pid)

        job = Job(producer)
        steps = [
            ("job.queued", job.submit),
            ("job.started", job.start),
            *(
                ("job.progress", lambda p=p: job.progress(100 * p / (progress_steps + 1)))
                for p in range(1, progress_steps + 1)
            ),
            ("job.succeeded", job.succeed),
        ]
        per_event: list[tuple[str, list[float]]] = []
        gateway_cpu = cpu_s(gw.process.pid)
        for name, action in steps:
            index = fanout.expect()
            sent = time.time()
            await action()
            try:
                async with asyncio.timeout(EVENT_TIMEOUT_S):
                    await fanout.complete[index].wait()
            except TimeoutError:
                got = len(fanout.received[index])
                raise SystemExit(f"{name}: only {got}/{clients} clients got it") from None
            per_event.append((name, [(t - sent) * 1000 for t in fanout.received[index]]))
            await asyncio.sleep(THROTTLE_GAP_S)
        gateway_cpu = cpu_s(gw.process.pid) - gateway_cpu
        for transport in transports:
            transport.close()
        await redis.aclose()

    everything = [ms for _, latencies in per_event for ms in latencies]
    p50, p99 = statistics.median(everything), percentile(everything, 99)
    per_conn = (rss_after - rss_before) / clients
    print(
        f"{clients} firehose clients on one gateway process (RLIMIT_NOFILE {limit}); "
        f"connected in {connect_s:.1f}s"
    )
    print(
        f"  gateway RSS {rss_before / 1024:.0f} MiB -> {rss_after / 1024:.0f} MiB: "
        f"{per_conn:.1f} KiB per connection"
    )
    print("  XADD -> receipt by every client, ms (p50 / p99 / max over clients):")
    for name, latencies in per_event:
        print(
            f"    {name:<16} {statistics.median(latencies):8.1f} "
            f"{percentile(latencies, 99):8.1f} {max(latencies):8.1f}"
        )
    print(f"  all {len(per_event)} events: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    deliveries = len(per_event) * clients
    print(
        f"  gateway CPU while sending: {gateway_cpu:.2f}s for {deliveries} deliveries, "
        f"{1e6 * gateway_cpu / deliveries:.0f} us each"
    )
    print(
        f"sse_clients={clients} event_p50_ms={p50:.1f} event_p99_ms={p99:.1f} "
        f"rss_per_conn_kib={per_conn:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--progress", type=int, default=8, help="progress events to send")
    args = parser.parse_args()
    asyncio.run(run(args.clients, args.progress))


if __name__ == "__main__":
    main()
