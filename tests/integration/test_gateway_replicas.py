"""Two gateway replicas behind one Redis: SSE resumes across them and their links are shared.

Each replica is a real `conveyor gateway` process with the same API keys and the same
CONVEYOR_TOKEN_SECRET, on its own port, as behind a load balancer. Jobs are driven through
their states with the producer (no worker), so every event is placed by the test.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
import redis.asyncio as aioredis

from conveyor.embedded_redis import EmbeddedRedis
from conveyor.process import ManagedProcess, free_port
from producer import Producer
from tests.fixtures.processes import conveyor_env, start_gateway
from tests.integration.helpers import Driver
from tests.integration.test_sse_server import DEADLINE_S, Reader, assert_increasing, read

pytestmark = pytest.mark.integration

TENANT = "t1"  # the tenant Driver submits as
AUTH = {"Authorization": "Bearer replica-key"}


@dataclass
class Replicas:
    queue: str
    urls: tuple[str, str]


@pytest.fixture(scope="module")
def replicas(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Replicas]:
    queue = f"replicas-{uuid.uuid4().hex[:8]}"
    workdir = tmp_path_factory.mktemp("replicas")
    env = conveyor_env(
        CONVEYOR_REDIS_URL=redis_server.url,
        CONVEYOR_QUEUES=queue,
        CONVEYOR_API_KEYS=f"replica-key={TENANT}",
        CONVEYOR_TOKEN_SECRET="shared-by-every-replica",
        CONVEYOR_SSE_PING_S="1",
    )
    started: list[ManagedProcess] = []
    try:
        urls = []
        for name in ("gateway-a", "gateway-b"):
            port = free_port()
            started.append(start_gateway(env, port=port, log_dir=workdir, name=name))
            urls.append(f"http://127.0.0.1:{port}")
        yield Replicas(queue, (urls[0], urls[1]))
    finally:
        for process in started:
            process.stop()


@pytest.fixture
async def clients(replicas: Replicas) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    a, b = replicas.urls
    async with (
        httpx.AsyncClient(base_url=a, timeout=DEADLINE_S) as gateway_a,
        httpx.AsyncClient(base_url=b, timeout=DEADLINE_S) as gateway_b,
    ):
        yield gateway_a, gateway_b


@pytest.fixture
def replica_driver(producer: Producer, redis: aioredis.Redis, replicas: Replicas) -> Driver:
    return Driver(producer, redis, replicas.queue)


Received = list[dict[str, str]]


def has(event: str, progress: int | None = None) -> Callable[[Received], bool]:
    """A predicate over what a reader received: `event` arrived (with that progress)."""
    needle = f'"progress":{progress}' if progress is not None else ""

    def check(received: Received) -> bool:
        return any(e.get("event") == event and needle in e.get("data", "") for e in received)

    return check


async def test_a_client_resumes_on_another_replica_missing_nothing(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient],
    replica_driver: Driver,
    producer: Producer,
) -> None:
    gateway_a, gateway_b = clients
    queue = replica_driver.queue
    job_id = await replica_driver.submit()
    path = f"/v1/jobs/{job_id}/events"

    on_a = read(gateway_a, path, AUTH)
    await on_a.until(has("snapshot"), "the snapshot from A")
    [(entry_id, _)] = [e for e in await replica_driver.deliver() if e[1] == job_id]
    [delivery] = await producer.start(queue, [(entry_id, job_id)], "c1")
    await on_a.until(has("job.started"), "job.started from A")
    # One progress at a time, each awaited: live progress is throttled per client, and the
    # test is about resuming, not about which of two quick progress events a client sees.
    for percent in (10, 20):
        await producer.progress(queue, job_id, delivery.attempt, percent, "working")
        await on_a.until(has("job.progress", percent), f"progress {percent} from A")
    await on_a.stop()  # the connection drops midway; the job goes on

    for percent in (30, 40, 50):
        await producer.progress(queue, job_id, delivery.attempt, percent, "working")

    on_b = read(gateway_b, path, {**AUTH, "Last-Event-ID": on_a.ids[-1]})
    await on_b.until(has("job.progress", 50), "the replay of what A's client missed, on B")
    await producer.progress(queue, job_id, delivery.attempt, 60, "working")
    await on_b.until(has("job.progress", 60), "a live event on B")
    assert await producer.succeed(delivery, {"ok": True})
    received_b = await on_b.ended()

    history = [e.id for e in await producer.events(queue, job_id)]
    assert on_a.ids + on_b.ids == history  # together exactly the job's own stream
    assert_increasing(on_a.ids + on_b.ids)  # strictly: no repeats across the two replicas
    assert not any(e.get("event") == "snapshot" for e in received_b)
    assert [e["event"] for e in received_b[1:]] == [
        *["job.progress"] * 4,
        "job.succeeded",
    ]
    assert received_b[-1]["id"] == history[-1]


async def test_an_events_link_issued_by_one_replica_works_on_the_other(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient], replicas: Replicas
) -> None:
    gateway_a, gateway_b = clients
    created = await gateway_a.post(
        "/v1/jobs", json={"type": "noop", "queue": replicas.queue}, headers=AUTH
    )
    assert created.status_code == 202, created.text
    job = created.json()
    link = job["links"]["events"]
    assert "token=" in link

    # No Authorization header: only the token, signed by A, is checked by B.
    watching: Reader = read(gateway_b, link)
    await watching.until(has("snapshot"), "the snapshot from B")
    assert (await gateway_b.post(f"/v1/jobs/{job['id']}/cancel", headers=AUTH)).status_code == 202
    received = await watching.ended()
    assert received[-1]["event"] == "job.cancelled"
    assert_increasing(watching.ids)

    forged = f"{link[:-2]}{'xx' if not link.endswith('xx') else 'yy'}"
    assert (await gateway_b.get(forged)).status_code == 401
