"""The hub's lanes (gateway.sse.lane): subscribers in step with the hub are written with one
bare transport.write each, and what reaches their sockets is exactly what the general path
would have sent. The hub runs without Redis here (events are offered by hand); the clients'
connections are real sockets."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from gateway.metrics import Metrics
from gateway.sse.hub import Hub
from gateway.sse.subscriber import Subscriber, chunk
from gateway.sse.transport import transport_writer
from producer import Producer
from schemas.models import Event
from schemas.settings import Settings


def event(ms: int, *, job: str = "j1", kind: str = "job.progress", queue: str = "q") -> Event:
    return Event.from_entry(
        f"{ms}-0",
        {
            "event": kind,
            "job_id": job,
            "queue": queue,
            "job_type": "sleep",
            "tenant": "acme",
            "status": "succeeded" if kind == "job.succeeded" else "running",
            "ts": "1764000000000",
        },
    )


def hub(queues: list[str] | None = None) -> Hub:
    store: Producer = None  # type: ignore[assignment]  # never read: events are offered by hand
    return Hub(store, Settings(queues=queues or ["q"]), Metrics())


class Peer:
    """The client's end of a connection: what it can read."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setblocking(False)
        self.data = b""

    def read(self) -> bytes:
        try:
            while more := self.sock.recv(1 << 16):
                self.data += more
        except BlockingIOError:
            pass
        return self.data

    def ids(self) -> list[str]:
        return [
            line.removeprefix(b"id: ").decode()
            for line in self.read().split(b"\r\n")
            if line.startswith(b"id: ")
        ]


Connect = Callable[[], Awaitable[tuple[asyncio.Transport, "Peer"]]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    transports: list[asyncio.Transport] = []
    peers: list[Peer] = []
    loop = asyncio.get_running_loop()

    async def one() -> tuple[asyncio.Transport, Peer]:
        ours, theirs = socket.socketpair()
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
        assert isinstance(transport, asyncio.Transport)
        transports.append(transport)
        peers.append(Peer(theirs))
        return transport, peers[-1]

    yield one
    for transport in transports:
        transport.close()
    for peer in peers:
        peer.sock.close()


def live_on(sub: Subscriber, transport: asyncio.Transport) -> None:
    """As HubEventSourceResponse does on the transport path."""
    sub.go_live(transport_writer(transport), chunked=True, transport=transport)


class Recorder:
    """A client on the general path (no transport), writing what a socket would receive."""

    def __init__(self) -> None:
        self.data = b""

    def write(self, frame: bytes) -> bool:
        self.data += frame
        return True


async def test_a_live_client_joins_its_jobs_lane_at_the_first_event_it_shares(
    connect: Connect,
) -> None:
    h = hub()
    sub = h.subscribe_job("q", "j1")
    sub.sent.mark(["q"], (1, 0))  # its snapshot
    transport, peer = await connect()
    live_on(sub, transport)
    h.dispatch(event(2))
    assert sub.lane is not None and sub.lane is h._jobs["j1"].lane
    h.dispatch(event(3))
    h.dispatch(event(4, kind="job.succeeded"))
    await asyncio.sleep(0)
    assert peer.ids() == ["2-0", "3-0", "4-0"]
    assert sub.closed and not sub.dropped and sub.lane is None  # the stream ends at terminal
    h.unsubscribe(sub)
    assert h.subscriber_count == 0


async def test_a_catch_up_ahead_of_the_hub_joins_once_the_hub_reaches_it(connect: Connect) -> None:
    h = hub()
    early, late = h.subscribe_job("q", "j1"), h.subscribe_job("q", "j1")
    (t1, p1), (t2, p2) = await connect(), await connect()
    early.sent.mark(["q"], (1, 0))
    live_on(early, t1)
    h.dispatch(event(2))
    assert early.lane is not None
    late.sent.mark(["q"], (4, 0))  # its replay read 3-0 and 4-0 before the hub did
    live_on(late, t2)
    h.dispatch(event(3))
    assert late.lane is None  # 3-0 was already sent to it
    h.dispatch(event(4))
    assert late.lane is early.lane  # now both have sent up to 4-0
    h.dispatch(event(5))
    await asyncio.sleep(0)
    assert p1.ids() == ["2-0", "3-0", "4-0", "5-0"]
    assert p2.ids() == ["5-0"]


async def test_an_event_older_than_the_lanes_last_is_skipped_as_sent_ids_skip_it(
    connect: Connect,
) -> None:
    """A throttled progress event released after a later event of another job: the lane's
    members skip it, as each one's own SentIds would; ids only ever grow."""
    h = hub()
    sub = h.subscribe_tenant("acme")
    transport, peer = await connect()
    live_on(sub, transport)
    h.dispatch(event(10, job="a"))
    assert sub.lane is not None
    h.dispatch(event(12, job="b"))
    h.dispatch(event(11, job="a"))  # released late
    h.dispatch(event(13, job="a"))
    await asyncio.sleep(0)
    assert peer.ids() == ["10-0", "12-0", "13-0"]


async def test_a_closed_member_leaves_and_nothing_more_reaches_its_connection(
    connect: Connect,
) -> None:
    h = hub()
    sub = h.subscribe_tenant("acme")
    transport, peer = await connect()
    live_on(sub, transport)
    h.dispatch(event(1))
    assert sub.lane is not None
    sub.close()  # the response's end (gateway.sse.response), before its last chunk
    h.dispatch(event(2))
    await asyncio.sleep(0)
    assert peer.ids() == ["1-0"]
    assert sub.lane is None and h.subscriber_count == 1  # unsubscribed by its response
    h.unsubscribe(sub)
    assert h.subscriber_count == 0


async def test_a_member_that_stopped_reading_is_dropped_alone(connect: Connect) -> None:
    h = hub()
    stalled, reading = h.subscribe_tenant("acme"), h.subscribe_tenant("acme")
    (t1, _), (t2, p2) = await connect(), await connect()
    t1.set_write_buffer_limits(high=2048)
    t2.set_write_buffer_limits(high=2048)
    live_on(stalled, t1)
    live_on(reading, t2)
    big = Event.from_entry(
        "1-0",
        {
            **{"event": "job.progress", "job_id": "j", "queue": "q", "job_type": "sleep"},
            **{
                "tenant": "acme",
                "status": "running",
                "ts": "1",
                "data": '{"m": "%s"}' % ("x" * 900),
            },
        },
    )
    h.dispatch(big)
    assert stalled.lane is not None and reading.lane is stalled.lane
    ms = 2
    while not stalled.dropped:
        h.dispatch(big.model_copy(update={"id": f"{ms}-0"}))
        p2.read()
        ms += 1
        assert ms < 10_000, "never dropped"
    assert stalled.closed and stalled.lane is None and stalled not in h._tenants["acme"].others
    assert t1.get_write_buffer_size() <= 2048 + 2000  # the mark plus one frame
    assert not reading.dropped and reading.lane is not None
    drops = h.metrics.registry.get_sample_value("conveyor_gateway_hub_dropped_subscribers_total")
    assert drops == 1


async def test_a_closing_connection_is_skipped(connect: Connect) -> None:
    h = hub()
    sub = h.subscribe_tenant("acme")
    transport, _ = await connect()
    live_on(sub, transport)
    h.dispatch(event(1))
    transport.close()
    h.dispatch(event(2))  # no error, nothing written: its response ends on the disconnect
    assert not sub.dropped


async def test_no_lane_for_filters_the_general_path_or_several_queues(connect: Connect) -> None:
    h = hub()
    filtered = h.subscribe_tenant("acme", job_types=["sleep"])
    general = h.subscribe_tenant("acme")
    transport, _ = await connect()
    live_on(filtered, transport)
    general.go_live(Recorder().write, chunked=True)  # no transport handed over
    h.dispatch(event(1))
    assert filtered.lane is None and general.lane is None

    several = hub(["q", "r"])
    firehose = several.subscribe_tenant("acme")
    job = several.subscribe_job("q", "j1")
    (t1, _), (t2, _) = await connect(), await connect()
    live_on(firehose, t1)
    live_on(job, t2)
    several.dispatch(event(1))
    assert firehose.lane is None  # it follows both queues: its id lines need their own check
    assert job.lane is not None


@pytest.mark.parametrize("seed", range(12))
async def test_lanes_change_nothing_on_the_wire(connect: Connect, seed: int) -> None:
    """Clients going live at random moments with random catch-up marks, events sometimes
    out of order (late throttled progress), terminal events: each transport-path client's
    socket gets byte for byte what its twin on the general path is sent."""
    rng = random.Random(seed)
    h = hub()
    pairs: list[tuple[Subscriber, Peer, Subscriber, Recorder]] = []
    pending: list[tuple[Subscriber, Subscriber, tuple[int, int] | None]] = []
    ms = 10
    for _ in range(60):
        roll = rng.random()
        if roll < 0.25:  # a client subscribes; it goes live a few events later
            job = rng.choice(["j1", "j2", None])
            fast, twin = (
                (h.subscribe_job("q", job), h.subscribe_job("q", job))
                if job
                else (h.subscribe_tenant("acme"), h.subscribe_tenant("acme"))
            )
            mark = (ms + rng.randint(-3, 3), 0) if rng.random() < 0.7 else None
            pending.append((fast, twin, mark))
        elif roll < 0.4 and pending:
            fast, twin, mark = pending.pop(rng.randrange(len(pending)))
            transport, peer = await connect()
            recorder = Recorder()
            for sub in (fast, twin):
                if mark is not None:
                    sub.sent.mark(["q"], mark)
            live_on(fast, transport)
            twin.go_live(recorder.write, chunked=True)
            pairs.append((fast, peer, twin, recorder))
        else:
            late = rng.random() < 0.15
            key = ms - rng.randint(1, 4) if late else ms + 1
            ms = max(ms, key)
            kind = "job.succeeded" if rng.random() < 0.03 else "job.progress"
            h.dispatch(event(key, job=rng.choice(["j1", "j2", "j3"]), kind=kind))
    await asyncio.sleep(0)
    assert any(fast.lane is not None for fast, *_ in pairs) or not pairs
    for fast, peer, twin, recorder in pairs:
        assert peer.read() == recorder.data
        assert (fast.closed, fast.dropped) == (twin.closed, twin.dropped)


def test_chunk_framing_is_the_transport_paths() -> None:
    assert chunk(b"data: x\r\n\r\n") == b"b\r\ndata: x\r\n\r\n\r\n"
