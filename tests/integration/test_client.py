"""The Python client against a real gateway process and a real worker (`stack`), and across
a gateway restart in the middle of a job's event stream."""

from __future__ import annotations

import asyncio
import builtins
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from conveyor.client import (
    AsyncClient,
    AuthError,
    Client,
    Conflict,
    ConveyorError,
    Event,
    Job,
    JobCancelled,
    JobFailed,
    JobStatus,
    NotFound,
    Retries,
    TimeoutError,
    ValidationError,
)
from conveyor.embedded_redis import EmbeddedRedis
from conveyor.process import ManagedProcess, free_port
from producer import Producer
from schemas.settings import Settings
from tests.fixtures.processes import HOST, REPO, conveyor_env, start_gateway
from tests.integration.conftest import Stack
from tests.integration.helpers import Driver

pytestmark = pytest.mark.integration

DEADLINE_S = 30.0


@pytest.fixture
def client(stack: Stack) -> Iterator[Client]:
    with Client(stack.url, "key-a") as c:
        yield c


@pytest.fixture
async def aclient(stack: Stack) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(stack.url, "key-a") as c:
        yield c


def test_submit_then_wait_returns_the_succeeded_job(client: Client, stack: Stack) -> None:
    job = client.submit("noop", {"n": 1}, queue=stack.queue, max_attempts=2, timeout_s=30)
    assert isinstance(job, Job)
    assert job.status in (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED)
    assert (job.type, job.payload, job.max_attempts, job.timeout_s) == ("noop", {"n": 1}, 2, 30)
    assert job.links["self"] == f"/v1/jobs/{job.id}"
    done = client.wait(job.id, timeout=DEADLINE_S)
    assert done.status is JobStatus.SUCCEEDED
    assert done.result == {"n": 1}
    assert client.get(job.id) == done


def test_events_are_the_jobs_history_from_its_first_to_its_terminal(client: Client) -> None:
    job = client.submit("sleep", {"seconds": 0.6, "steps": 2})
    events = list(client.events(job.id))
    assert all(isinstance(e, Event) and e.job_id == job.id for e in events)
    assert [e.id for e in events] == [e.id for e in client.history(job.id)]
    kinds = [e.event for e in events]
    assert kinds[:2] == ["job.queued", "job.started"]
    assert kinds.count("job.progress") == 2
    assert kinds[-1] == "job.succeeded" and events[-1].is_terminal
    # From a point on: only what came after it.
    assert list(client.events(job.id, last_event_id=events[1].id)) == events[2:]


def test_wait_raises_job_failed_carrying_the_job(client: Client) -> None:
    job = client.submit("permanent", {"reason": "bad input"})
    with pytest.raises(JobFailed) as raised:
        client.wait(job.id, timeout=DEADLINE_S)
    assert raised.value.job.id == job.id
    assert raised.value.job.status is JobStatus.FAILED
    assert "bad input" in (raised.value.job.error or "")


async def test_wait_raises_job_cancelled_when_the_running_job_is_cancelled(
    aclient: AsyncClient, tmp_path: Path
) -> None:
    marker = tmp_path / "cleaned"
    job = await aclient.submit("hang", {"marker": str(marker)})
    waiting = asyncio.create_task(aclient.wait(job.id, timeout=DEADLINE_S))
    async with asyncio.timeout(DEADLINE_S), aclosing(aclient.events(job.id)) as events:
        async for event in events:
            if event.event == "job.progress":  # the handler is running: cancel it now
                break
    after = await aclient.cancel(job.id)
    assert after.status is JobStatus.CANCELLED or after.cancel_requested
    with pytest.raises(JobCancelled) as raised:
        await waiting
    assert raised.value.job.status is JobStatus.CANCELLED
    assert marker.read_text().startswith("cleaned up")


def test_wait_times_out_on_a_job_that_does_not_end(client: Client) -> None:
    job = client.submit("noop", delay_s=3600)
    started = time.monotonic()
    with pytest.raises(TimeoutError) as raised:
        client.wait(job.id, timeout=0.5)
    assert 0.5 <= time.monotonic() - started < 5
    assert isinstance(raised.value, builtins.TimeoutError)
    assert client.get(job.id).status is JobStatus.SCHEDULED


async def test_async_wait_times_out_exactly(aclient: AsyncClient) -> None:
    job = await aclient.submit("noop", delay_s=3600)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await aclient.wait(job.id, timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 2


def test_cancel_retry_and_the_conflicts_between(client: Client) -> None:
    job = client.submit("noop", {"k": "v"}, delay_s=3600)
    assert job.status is JobStatus.SCHEDULED
    cancelled = client.cancel(job.id)
    assert cancelled.status is JobStatus.CANCELLED
    with pytest.raises(JobCancelled):
        client.wait(job.id, timeout=DEADLINE_S)
    assert client.cancel(job.id).status is JobStatus.CANCELLED  # idempotent
    assert client.retry(job.id).status in (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED)
    assert client.wait(job.id, timeout=DEADLINE_S).result == {"k": "v"}
    with pytest.raises(Conflict):
        client.retry(job.id)
    history = client.history(job.id)
    kinds = [e.event for e in history]
    assert kinds[0] == "job.scheduled" and kinds[-1] == "job.succeeded"
    assert "job.cancelled" in kinds
    assert list(client.events(job.id)) == history  # past the first run's end, to the last


def test_list_pages_newest_first_and_list_all_walks_every_page(client: Client) -> None:
    tag = uuid.uuid4().hex
    ids = [client.submit("noop", {"tag": tag, "i": i}, delay_s=3600).id for i in range(5)]
    first = client.list(status="scheduled", type="noop", limit=2)
    assert len(first.items) == 2 and first.next_cursor is not None
    second = client.list(status="scheduled", type="noop", limit=2, cursor=first.next_cursor)
    assert {j.id for j in first.items}.isdisjoint(j.id for j in second.items)
    mine = [j.id for j in client.list_all(status="scheduled", type="noop", page_size=2)
            if j.payload.get("tag") == tag]  # fmt: skip
    assert mine == ids[::-1]
    assert all(j.status is JobStatus.SCHEDULED for j in first.items + second.items)


def test_submit_many_answers_each_item_in_order_across_chunks(client: Client) -> None:
    jobs = [{"type": "noop", "payload": {"i": i}, "delay_s": 3600} for i in range(1001)]
    jobs[3] = {"type": "no-such-type"}
    results = client.submit_many(jobs)
    assert len(results) == 1001
    bad = results.pop(3)
    assert isinstance(bad, ValidationError) and "no-such-type" in bad.message
    assert all(isinstance(r, Job) for r in results)
    assert [r.payload["i"] for r in results if isinstance(r, Job)] == [
        i for i in range(1001) if i != 3
    ]


def test_an_idempotency_key_gives_the_same_job_back(client: Client) -> None:
    key = f"order-{uuid.uuid4().hex}"
    first = client.submit("noop", {"a": 1}, idempotency_key=key, delay_s=3600)
    again = client.submit("noop", {"a": 2}, idempotency_key=key, delay_s=3600)
    assert again.id == first.id and again.payload == {"a": 1}


def test_errors_map_to_the_tree(client: Client, stack: Stack) -> None:
    with Client(stack.url, "wrong-key") as stranger, pytest.raises(AuthError) as auth:
        stranger.list()
    assert auth.value.status_code == 401
    with pytest.raises(NotFound):
        client.get(uuid.uuid4().hex)
    theirs = client.submit("noop", delay_s=3600)
    with Client(stack.url, "key-b") as other, pytest.raises(NotFound):
        other.get(theirs.id)
    with pytest.raises(ValidationError) as unknown_type:
        client.submit("no-such-type")
    assert "no-such-type" in unknown_type.value.message
    with pytest.raises(ValidationError) as unknown_option:
        client.submit("noop", bogus_option=1)  # type: ignore[call-arg]
    assert "bogus_option" in unknown_option.value.message
    assert [d["loc"] for d in unknown_option.value.detail] == [["body", "bogus_option"]]
    with pytest.raises(ConveyorError):  # every one of them is one
        client.cancel(uuid.uuid4().hex)


# --- a gateway restart in the middle of a stream ---------------------------------------------


class Restartable:
    """A gateway process that can be stopped and started again on the same port."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.env = env
        self.log_dir = log_dir
        self.starts = 0
        self.process: ManagedProcess | None = None

    def start(self) -> None:
        self.starts += 1
        name = f"gateway-{self.starts}"
        self.process = start_gateway(
            self.env, port=self.port, log_dir=self.log_dir, name=name, cwd=REPO
        )

    def stop(self, signum: int) -> None:
        assert self.process is not None
        if signum != signal.SIGTERM:  # stop() sends SIGTERM first
            self.process.signal(signum)
        self.process.stop()


@pytest.fixture
def restartable(
    redis_server: EmbeddedRedis, queue_name: str, tmp_path: Path
) -> Iterator[Restartable]:
    env = conveyor_env(
        CONVEYOR_REDIS_URL=redis_server.url,
        CONVEYOR_QUEUES=queue_name,
        CONVEYOR_HANDLERS="tests.handlers",
        CONVEYOR_API_KEYS="key-a=acme",
        CONVEYOR_SSE_PROGRESS_INTERVAL_S="0",
        CONVEYOR_LOG_LEVEL="WARNING",
    )
    gateway = Restartable(env, tmp_path)
    gateway.start()
    try:
        yield gateway
    finally:
        if gateway.process is not None:
            gateway.process.stop()


Follow = Callable[[str, str, "asyncio.Queue[Event]"], "asyncio.Future[None]"]


def follow_async(url: str, job_id: str, out: asyncio.Queue[Event]) -> asyncio.Future[None]:
    async def run() -> None:
        async with AsyncClient(url, "key-a", retries=PATIENT) as client:
            async for event in client.events(job_id):
                out.put_nowait(event)

    return asyncio.ensure_future(run())


def follow_sync(url: str, job_id: str, out: asyncio.Queue[Event]) -> asyncio.Future[None]:
    loop = asyncio.get_running_loop()

    def run() -> None:
        with Client(url, "key-a", retries=PATIENT) as client:
            for event in client.events(job_id):
                loop.call_soon_threadsafe(out.put_nowait, event)

    return asyncio.ensure_future(asyncio.to_thread(run))


# A gateway process takes a second or two to start: keep trying for longer than that.
PATIENT = Retries(attempts=60, backoff_s=0.05, max_backoff_s=0.5)


@pytest.mark.parametrize(
    ("follow", "signum"),
    [(follow_async, signal.SIGKILL), (follow_sync, signal.SIGTERM)],
    ids=["async-killed", "sync-stopped"],
)
async def test_events_survive_a_gateway_restart_missing_and_repeating_nothing(
    follow: Follow,
    signum: int,
    restartable: Restartable,
    redis: aioredis.Redis,
    settings_factory: Callable[..., Settings],
    queue_name: str,
) -> None:
    producer = Producer(redis, settings_factory(handlers="tests.handlers"))
    driver = Driver(producer, redis, queue_name)
    async with AsyncClient(restartable.url, "key-a") as client:
        job = await client.submit("noop")
    [entry] = [e for e in await driver.deliver() if e[1] == job.id]
    [delivery] = await producer.start(queue_name, [entry], "c1")
    received: asyncio.Queue[Event] = asyncio.Queue()
    following = follow(restartable.url, job.id, received)

    async def next_event() -> Event:
        async with asyncio.timeout(DEADLINE_S):
            return await received.get()

    got = [await next_event(), await next_event()]  # from the history: queued, started
    await producer.progress(queue_name, job.id, delivery.attempt, 10)
    got.append(await next_event())  # live
    assert [e.event for e in got] == ["job.queued", "job.started", "job.progress"]

    await asyncio.to_thread(restartable.stop, signum)
    for percent in (20, 30, 40):  # while no gateway is there to see them
        await producer.progress(queue_name, job.id, delivery.attempt, percent)
    await asyncio.to_thread(restartable.start)
    await producer.progress(queue_name, job.id, delivery.attempt, 50)
    assert await producer.succeed(delivery, {"ok": True})

    async with asyncio.timeout(DEADLINE_S):
        await following
    while not received.empty():
        got.append(received.get_nowait())
    async with AsyncClient(restartable.url, "key-a") as client:
        history = await client.history(job.id)
    assert [e.id for e in got] == [e.id for e in history]
    assert [e.data.get("progress") for e in got if e.event == "job.progress"] == [
        10,
        20,
        30,
        40,
        50,
    ]
    assert got[-1].event == "job.succeeded"


def test_the_readme_example_runs_as_written(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Python client", 1)[1]
    example = section.split("```python\n", 1)[1].split("```", 1)[0]
    example = example.replace("http://127.0.0.1:8000", stack.url).replace(
        "<the key it printed>", "key-a"
    )
    exec(compile(example, "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines[:5]] == [
        "job.queued", "job.started", "job.progress", "job.progress", "job.succeeded"
    ]  # fmt: skip
    assert lines[5] == "succeeded"
    assert len(lines) > 6  # and the listing
