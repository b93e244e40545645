"""The floor under bench.sse_fanout: the same clients, measured the same way, fed by the least
a Python process can do per connection.

    .venv/bin/python -m bench.sse_floor [--clients 10000] [--events 11]

A child process accepts the connections with a bare `asyncio.Protocol` (no HTTP framework,
no Redis), answers each with the same response head and `retry:` block as the gateway, and
on each command writes one pre-encoded SSE frame to every connection with
`transport.write`. The clients are bench.sse_fanout's. What this prints is what the machine
allows: the gateway's figures can approach it, not beat it.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import time
from multiprocessing.connection import Connection

from bench.http_submit import percentile
from bench.sse_fanout import CONNECT_CONCURRENCY, EVENT_TIMEOUT_S, Fanout, SseClient, raise_nofile

HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"Connection: close\r\n\r\nretry: 5000\r\n\r\n"
)
FRAME = (
    b"id: 1764000000000-0\r\nevent: job.progress\r\ndata: "
    b'{"id":"1764000000000-0","event":"job.progress","job_id":"0f6d2c8e4b1a4f0e9d3c7b2a1e5f6a7b",'
    b'"queue":"default","job_type":"sleep","tenant":"bench","status":"running","attempt":1,'
    b'"ts":1764000000000,"data":{"progress":50.0,"stage":"working"}}\r\n\r\n'
)


def serve(control: Connection, backlog: int) -> None:
    """The child: accept, answer, and on each command write FRAME to every connection."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        streams: list[asyncio.Transport] = []

        class Stream(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                assert isinstance(transport, asyncio.Transport)
                self.transport = transport
                self.answered = False

            def data_received(self, data: bytes) -> None:
                if not self.answered:  # the request: answer once, then stream
                    self.answered = True
                    self.transport.write(HEAD)
                    streams.append(self.transport)

        server = await loop.create_server(Stream, "127.0.0.1", 0, backlog=backlog)
        control.send(server.sockets[0].getsockname()[1])
        while await loop.run_in_executor(None, control.recv) != "stop":
            sent = time.time()
            for transport in streams:
                transport.write(FRAME)
            control.send(sent)
        server.close()

    asyncio.run(main())


async def run(clients: int, events: int) -> None:
    limit = raise_nofile(clients + 1000)
    if limit < clients + 100:
        raise SystemExit(f"RLIMIT_NOFILE is {limit}: too low for {clients} clients")
    control, child_end = multiprocessing.Pipe()
    child = multiprocessing.get_context("fork").Process(
        target=serve, args=(child_end, max(2048, clients)), daemon=True
    )
    child.start()
    try:
        port = control.recv()
        fanout = Fanout(clients)
        request = b"GET /v1/events HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def connect() -> None:
            async with gate:
                await loop.create_connection(lambda: SseClient(fanout, request), "127.0.0.1", port)

        await asyncio.gather(*(connect() for _ in range(clients)))
        async with asyncio.timeout(EVENT_TIMEOUT_S):
            await fanout.all_connected.wait()
        latencies: list[float] = []
        for _ in range(events):
            index = fanout.expect()
            control.send("go")
            sent = await loop.run_in_executor(None, control.recv)
            async with asyncio.timeout(EVENT_TIMEOUT_S):
                await fanout.complete[index].wait()
            latencies += [(t - sent) * 1000 for t in fanout.received[index]]
        control.send("stop")
    finally:
        child.join(5)
        if child.is_alive():
            child.kill()
    p50, p99 = statistics.median(latencies), percentile(latencies, 99)
    print(f"{clients} clients, {events} events, one bare asyncio process writing one frame each")
    print(f"sse_floor_clients={clients} event_p50_ms={p50:.1f} event_p99_ms={p99:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=11)
    args = parser.parse_args()
    asyncio.run(run(args.clients, args.events))


if __name__ == "__main__":
    main()
