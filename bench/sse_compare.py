"""The SSE fan-out beside its floor, in one run on the same client processes, alternating.

    .venv/bin/python -m bench.sse_compare [--clients 10000] [--rounds 3] [--progress 8]
                                          [--client-processes 2] [--py-spy OUT]

The two benchmarks it pairs are bench.sse_fanout (N firehose clients on one gateway
process, which a job driven by the producer sends its events to) and bench.sse_floor (the
same clients fed by a bare asyncio process writing one pre-encoded frame to each). Run
apart, on a machine shared with other work, their figures come from different moments and
their ratio moves by half. Here the same client processes hold both sets of N connections,
and each of the job's events is followed (or, every other step, preceded) by one floor
event, so both meet the same load, the same client code and the same moment.

The clients are bench.sse_fanout's `SseClient`s, split over `--client-processes` forked
processes (2 by default: 2 x N sockets do not fit one process's RLIMIT_NOFILE of 20,000
here), each holding its share of connections to both servers. Latency is measured as each
benchmark measures it alone: the gateway's from just before the producer call whose XADD
makes the event to its receipt by each client (Redis, the hub's XREAD and the fan-out); the
floor's from just before its write loop. CPU per delivery is each server process's CPU over
its own events only (and the clients' CPU over the same events); RSS per connection is VmRSS
after its clients connected minus before, over N. The gateway runs as `conveyor gateway`
runs it (gateway.server.serve).

`--py-spy OUT` records the gateway with py-spy (without pausing it) while the events are
sent, writes the collapsed stacks to OUT, and prints where the gateway's time per delivery
went (bench.sse_profile).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis

from bench import sse_floor
from bench.http_submit import API_KEY, QUEUE, cpu_s, gateway, percentile
from bench.sse_fanout import (
    CONNECT_CONCURRENCY,
    CONNECT_TIMEOUT_S,
    EVENT_TIMEOUT_S,
    THROTTLE_GAP_S,
    Fanout,
    Job,
    SseClient,
    raise_nofile,
    rss_kib,
)
from bench.sse_profile import breakdown, print_breakdown
from producer import Producer
from schemas import Settings

PY_SPY_RATE = 1000
FLOOR_REQUEST = b"GET /v1/events HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"  # as bench.sse_floor


class Receipts(Fanout):
    """A client process's share of one server's clients: event indexes are made as events
    arrive, so the parent need not announce each one."""

    def got(self, index: int, at: float) -> None:
        self._reach(index)
        super().got(index, at)

    def _reach(self, index: int) -> None:
        while index >= len(self.received):
            self.expect()

    async def collect(self, index: int) -> list[float] | str:
        self._reach(index)
        try:
            async with asyncio.timeout(EVENT_TIMEOUT_S):
                await self.complete[index].wait()
        except TimeoutError:
            return f"only {len(self.received[index])}/{self.clients} got event {index}"
        return self.received[index]


async def open_streams(
    fanout: Fanout, host: str, port: int, request: bytes
) -> list[asyncio.BaseTransport] | str:
    """`fanout.clients` connections to one server, each sending `request`; the transports,
    or what went wrong."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    transports: list[asyncio.BaseTransport] = []

    async def one() -> None:
        async with gate:
            transport, _ = await loop.create_connection(
                lambda: SseClient(fanout, request), host, port
            )
            transports.append(transport)

    await asyncio.gather(*(one() for _ in range(fanout.clients)))
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            await fanout.all_connected.wait()
    except TimeoutError:
        return f"{fanout.connected}/{fanout.clients} opened; refused: {fanout.refused}"
    return transports


def client_process(control: Connection) -> None:
    """A forked client process: opens streams, then reports receipt times, on command."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        receipts: dict[str, Receipts] = {}
        transports: list[asyncio.BaseTransport] = []
        while True:
            command, *args = await loop.run_in_executor(None, control.recv)
            if command == "connect":
                side, host, port, request, count = args
                receipts[side] = Receipts(count)
                opened = await open_streams(receipts[side], host, port, request)
                if isinstance(opened, str):
                    control.send(opened)
                else:
                    transports += opened
                    control.send(None)
            elif command == "collect":
                side, index = args
                control.send(await receipts[side].collect(index))
            else:
                for transport in transports:
                    transport.close()
                return

    asyncio.run(main())


class Clients:
    """The client processes, forked before anything else exists so that they hold none of
    this process's sockets; each holds its share of every server's connections."""

    def __init__(self, processes: int) -> None:
        context = multiprocessing.get_context("fork")
        self.controls: list[Connection] = []
        self.processes = []
        for _ in range(processes):
            control, child_end = multiprocessing.Pipe()
            process = context.Process(target=client_process, args=(child_end,), daemon=True)
            process.start()
            self.controls.append(control)
            self.processes.append(process)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    async def _ask(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        loop = asyncio.get_running_loop()
        for control, command in zip(self.controls, commands, strict=True):
            control.send(command)
        return await asyncio.gather(
            *(loop.run_in_executor(None, control.recv) for control in self.controls)
        )

    async def connect(self, side: str, host: str, port: int, request: bytes, n: int) -> None:
        k = len(self.controls)
        shares = [n // k + (i < n % k) for i in range(k)]
        errors = await self._ask([("connect", side, host, port, request, s) for s in shares])
        if any(errors):
            raise SystemExit(f"{side}: {'; '.join(e for e in errors if e)}")

    async def receipts(self, side: str, index: int) -> list[float]:
        replies = await self._ask([("collect", side, index)] * len(self.controls))
        problems = [r for r in replies if isinstance(r, str)]
        if problems:
            raise SystemExit(f"{side}: {'; '.join(problems)}")
        return [t for reply in replies for t in reply]

    def stop(self) -> None:
        for control, process in zip(self.controls, self.processes, strict=True):
            _send_quietly(control, ("stop",))
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join(5)


class Floor:
    """The floor's server: bench.sse_floor's child, forked as early as the clients."""

    def __init__(self, backlog: int) -> None:
        self.control, child_end = multiprocessing.Pipe()
        self.process = multiprocessing.get_context("fork").Process(
            target=sse_floor.serve, args=(child_end, backlog), daemon=True
        )
        self.process.start()
        self.port: int = self.control.recv()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    async def send(self) -> float:
        """Have it write one frame to every connection; the time just before it began."""
        self.control.send("go")
        sent: float = await asyncio.get_running_loop().run_in_executor(None, self.control.recv)
        return sent

    def stop(self) -> None:
        _send_quietly(self.control, "stop")
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


def _send_quietly(control: Connection, message: Any) -> None:
    with contextlib.suppress(OSError):  # the child is gone already
        control.send(message)


@dataclass
class Side:
    """One server's figures: latencies (ms) per round; CPU over its own events."""

    name: str
    pid: int
    clients: Clients
    rounds: list[list[float]] = field(default_factory=list)
    events: int = 0
    cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    rss_per_conn_kib: float = 0.0

    async def measure(self, send: Callable[[], Awaitable[float]]) -> None:
        """One event: `send` makes it and returns the time it counts from."""
        cpu, client_cpu = cpu_s(self.pid), sum(map(cpu_s, self.clients.pids))
        sent = await send()
        received = await self.clients.receipts(self.name, self.events)
        self.cpu_s += cpu_s(self.pid) - cpu
        self.client_cpu_s += sum(map(cpu_s, self.clients.pids)) - client_cpu
        self.events += 1
        self.rounds[-1] += [(t - sent) * 1000 for t in received]

    @property
    def latencies(self) -> list[float]:
        return [ms for one in self.rounds for ms in one]

    @property
    def deliveries(self) -> int:
        return sum(map(len, self.rounds))

    @property
    def cpu_us(self) -> float:
        return 1e6 * self.cpu_s / self.deliveries


class PySpy:
    """py-spy recording one process, stopped by pid (SIGINT makes it write its output)."""

    def __init__(self, pid: int, out: Path) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        argv = [
            exe, "record", "--pid", str(pid), "--rate", str(PY_SPY_RATE), "--nonblocking",
            "--format", "raw", "--output", str(out),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(1.0)  # attached before the first event
        if self.process.poll() is not None:
            assert self.process.stderr is not None
            raise SystemExit(f"py-spy exited: {self.process.stderr.read().decode()}")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


async def events_request(url: str) -> bytes:
    """The firehose request, with the event link's token, as bench.sse_fanout sends it."""
    async with httpx.AsyncClient(base_url=url) as http:
        page = await http.get(
            "/v1/jobs", params={"limit": 1}, headers={"Authorization": f"Bearer {API_KEY}"}
        )
        page.raise_for_status()
        path = page.json()["links"]["events"]
    host_port = url.removeprefix("http://")
    return (
        f"GET {path} HTTP/1.0\r\nHost: {host_port}\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()


def job_steps(job: Job, progress_steps: int) -> list[Callable[[], Awaitable[None]]]:
    """What a worker does to a job, one event each: queued, started, progress..., succeeded."""
    return [
        job.submit,
        job.start,
        *(
            lambda p=p: job.progress(100 * p / (progress_steps + 1))
            for p in range(1, progress_steps + 1)
        ),
        job.succeed,
    ]


async def run(
    n: int, rounds: int, progress_steps: int, clients: Clients, floor: Floor, spy_out: Path | None
) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="bench-sse-compare-") as tmp,
        gateway(Path(tmp), as_deployed=True) as gw,
    ):
        redis = aioredis.Redis.from_url(gw.redis_url, decode_responses=True)
        producer = Producer(redis, Settings(redis_url=gw.redis_url, queues=[QUEUE]))
        await producer.ensure_group(QUEUE)
        gateway_side = Side("gateway", gw.process.pid, clients)
        floor_side = Side("floor", floor.pid, clients)
        host, port = gw.url.removeprefix("http://").split(":")
        before = rss_kib(gw.process.pid)
        await clients.connect("gateway", host, int(port), await events_request(gw.url), n)
        gateway_side.rss_per_conn_kib = (rss_kib(gw.process.pid) - before) / n
        before = rss_kib(floor.pid)
        await clients.connect("floor", "127.0.0.1", floor.port, FLOOR_REQUEST, n)
        floor_side.rss_per_conn_kib = (rss_kib(floor.pid) - before) / n

        spy = PySpy(gw.process.pid, spy_out) if spy_out else None
        try:
            for round_no in range(rounds):
                gateway_side.rounds.append([])
                floor_side.rounds.append([])
                steps = job_steps(Job(producer), progress_steps)
                for step_no, step in enumerate(steps):

                    async def via_gateway(step: Callable[[], Awaitable[None]] = step) -> float:
                        sent = time.time()
                        await step()
                        return sent

                    pair = [(gateway_side, via_gateway), (floor_side, floor.send)]
                    if (round_no + step_no) % 2:
                        pair.reverse()  # neither always goes first
                    for side, send in pair:
                        await side.measure(send)
                    # The gateway holds a progress event that comes sooner than
                    # CONVEYOR_SSE_PROGRESS_INTERVAL_S after the last: keep it out of the figures.
                    await asyncio.sleep(THROTTLE_GAP_S)
        finally:
            if spy is not None:
                spy.stop()
        await redis.aclose()
    report(n, len(clients.controls), gateway_side, floor_side)
    if spy_out is not None:
        print_breakdown(breakdown(spy_out), gateway_side.deliveries, gateway_side.cpu_us)


def report(n: int, processes: int, gateway_side: Side, floor_side: Side) -> None:
    events = gateway_side.events // len(gateway_side.rounds)
    print(
        f"{n} SSE clients in {processes} processes on each of: one gateway process (as "
        f"`conveyor gateway` runs it) and a bare asyncio process writing one pre-encoded frame "
        f"to each; {len(gateway_side.rounds)} rounds of {events} events each, alternating"
    )
    print("  ms                gateway p50    p99 |   floor p50    p99 | p99 ratio")
    ratios = []
    for number, (g, f) in enumerate(zip(gateway_side.rounds, floor_side.rounds, strict=True)):
        g99, f99 = percentile(g, 99), percentile(f, 99)
        ratios.append(g99 / f99)
        print(
            f"    round {number + 1:<2}     {statistics.median(g):11.1f} {g99:6.1f} | "
            f"{statistics.median(f):11.1f} {f99:6.1f} | {g99 / f99:9.2f}"
        )
    figures = {}
    for side in (gateway_side, floor_side):
        p50, p99 = statistics.median(side.latencies), percentile(side.latencies, 99)
        us, client_us = side.cpu_us, 1e6 * side.client_cpu_s / side.deliveries
        figures[side.name] = (p50, p99, us)
        print(
            f"  {side.name:<8} all: p50 {p50:6.1f} ms, p99 {p99:6.1f} ms; CPU per delivery "
            f"{us:5.1f} us (clients {client_us:5.1f} us); {side.rss_per_conn_kib:5.1f} KiB RSS "
            f"per connection"
        )
    (g50, g99, g_us), (f50, f99, f_us) = figures["gateway"], figures["floor"]
    print(
        f"sse_clients={n} gateway_p50_ms={g50:.1f} gateway_p99_ms={g99:.1f} "
        f"floor_p50_ms={f50:.1f} floor_p99_ms={f99:.1f} ratio={g99 / f99:.2f} "
        f"round_ratios={','.join(f'{r:.2f}' for r in ratios)} "
        f"gateway_cpu_us={g_us:.1f} floor_cpu_us={f_us:.1f} "
        f"gateway_rss_kib_per_conn={gateway_side.rss_per_conn_kib:.1f} "
        f"floor_rss_kib_per_conn={floor_side.rss_per_conn_kib:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3, help="jobs, each a round of events")
    parser.add_argument("--progress", type=int, default=8, help="progress events per job")
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--py-spy", type=Path, default=None, metavar="OUT", dest="py_spy")
    args = parser.parse_args()
    per_process = -(-2 * args.clients // args.client_processes)
    limit = raise_nofile(max(args.clients, per_process) + 1000)
    if limit < max(args.clients, per_process) + 100:
        raise SystemExit(
            f"RLIMIT_NOFILE is {limit}: too low for {per_process} client sockets per process; "
            "use more --client-processes"
        )
    # Forked first, while this process has no loop, thread or socket.
    clients = Clients(args.client_processes)
    floor = Floor(backlog=max(2048, args.clients))
    try:
        asyncio.run(run(args.clients, args.rounds, args.progress, clients, floor, args.py_spy))
    finally:
        clients.stop()
        floor.stop()


if __name__ == "__main__":
    main()
