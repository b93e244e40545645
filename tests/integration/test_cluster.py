"""Conveyor on a real 3-master Redis Cluster: submit, run, reclaim and SSE, with two queues
whose hash tags land on different nodes (tests/fixtures/cluster.py starts the cluster)."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from asgi_lifespan import LifespanManager
from redis.crc import key_slot
from redis.exceptions import ConnectionError, RedisError

from consumers.worker import ConveyorWorker, connect
from conveyor.commands import inspect_lines
from conveyor.gateway_app import gateway_app
from conveyor.process import ManagedProcess
from gateway.deps import Gateway
from gateway.sse.subscriber import Subscriber
from producer import Producer
from producer.connection import ConveyorCluster, redis_from_url
from schemas import CONSUMER_GROUP, JobStatus, QueueKeys, Settings, SubmitRequest
from tests.fixtures.cluster import HOST, LocalCluster, local_cluster
from tests.fixtures.processes import REPO, conveyor_env, start_worker
from tests.integration.conftest import FAST
from tests.integration.flow_scenarios import fan_in_survives_a_killed_consumer
from tests.integration.helpers import running, until, wait_for_terminal

pytestmark = pytest.mark.integration

A = {"Authorization": "Bearer key-a"}
DEADLINE_S = 15.0


@pytest.fixture(scope="module")
def queues(redis_cluster: LocalCluster) -> tuple[str, str]:
    """Two fresh queue names owned by different masters."""
    base = f"cl-{uuid.uuid4().hex[:6]}"
    first = f"{base}-0"
    owner = redis_cluster.node_for(QueueKeys(first).jobs)
    for i in itertools.count(1):
        other = f"{base}-{i}"
        if redis_cluster.node_for(QueueKeys(other).jobs) != owner:
            return first, other
    raise AssertionError("unreachable")


@pytest.fixture
def settings(
    settings_factory: Callable[..., Settings],
    redis_cluster: LocalCluster,
    queues: tuple[str, str],
) -> Settings:
    return settings_factory(
        redis_url=redis_cluster.url,
        queues=list(queues),
        handlers="tests.handlers",
        api_keys={"key-a": "acme"},
        token_secret="cluster-secret",
        block_ms=200,
        backoff_base_s=0.05,
        backoff_max_s=0.1,
    )


@pytest.fixture
async def cluster(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    assert settings.redis_url is not None
    client = redis_from_url(settings.redis_url, socket_timeout=10)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def producer(cluster: aioredis.Redis, settings: Settings) -> Producer:
    return Producer(cluster, settings)


async def drain(settings: Settings, queue: str) -> ConveyorWorker:
    """Run a burst worker on `queue` until it is empty; the worker, for its counters."""
    worker = ConveyorWorker(
        settings, connect(settings), queue=queue, handle_signals=False, burst=True
    )
    await worker.async_run()
    await worker.close()
    return worker


def test_the_client_is_a_cluster_client_and_the_queues_live_apart(
    redis_cluster: LocalCluster, queues: tuple[str, str], settings: Settings
) -> None:
    assert settings.redis_url is not None
    assert isinstance(redis_from_url(settings.redis_url), ConveyorCluster)
    owners = {redis_cluster.node_for(QueueKeys(q).jobs) for q in queues}
    assert len(owners) == 2


async def test_submit_and_run_on_two_nodes_each_job_once(
    redis_cluster: LocalCluster, queues: tuple[str, str], producer: Producer, settings: Settings
) -> None:
    submitted: dict[str, set[str]] = {}
    for queue in queues:
        await producer.ensure_group(queue)
        # Pipelined submit scripts (one slot per pipeline), a plain one, and a job that
        # fails once: its retry goes through the delayed set and the promote script.
        ids = await producer.submit_many(
            [SubmitRequest(type="noop", queue=queue, payload={"i": i}) for i in range(40)]
        )
        ids.append(
            (await producer.submit(SubmitRequest(type="noop", queue=queue), tenant="t")).job_id
        )
        retried = await producer.submit(
            SubmitRequest(type="flaky", queue=queue, payload={"fail_attempts": 1})
        )
        submitted[queue] = {*ids, retried.job_id}

    for queue in queues:
        worker = await drain(settings, queue)
        assert worker.jobs_complete == len(submitted[queue])
        assert worker.jobs_retried == 1
        terminal = await wait_for_terminal(producer.redis, queue, submitted[queue], DEADLINE_S)
        assert all(events == ["job.succeeded"] for events in terminal.values())
        job = await producer.get(queue, min(submitted[queue]))
        assert job is not None and job.status is JobStatus.SUCCEEDED
        # `conveyor inspect` reads one queue's keys: one slot, fine on a cluster.
        lines = await inspect_lines(producer, queue)
        assert any(f"group '{CONSUMER_GROUP}'  pending 0" in line for line in lines), lines

    # Each queue's keys are in its slot on its own master, and on no other node.
    for queue in queues:
        keys = QueueKeys(queue)
        owner = redis_cluster.node_for(keys.events)
        for port in redis_cluster.ports:
            with redis.Redis(HOST, port) as node:
                held = node.execute_command(
                    "CLUSTER", "COUNTKEYSINSLOT", key_slot(keys.events.encode())
                )
                assert (held > 0) == (port == owner), (queue, port, held)


async def test_reclaim_takes_over_an_abandoned_entry_and_fences_its_first_owner(
    queues: tuple[str, str], producer: Producer, cluster: aioredis.Redis
) -> None:
    for queue in queues:
        await producer.ensure_group(queue)
        job_id = (await producer.submit(SubmitRequest(type="noop", queue=queue))).job_id
        reply = await cluster.xreadgroup(
            CONSUMER_GROUP, "ghost", {producer.keys(queue).jobs: ">"}, count=10
        )
        entries = [(eid, f["job_id"]) for _, rows in reply for eid, f in rows]
        assert [job for _, job in entries] == [job_id]
        (abandoned,) = await producer.start(queue, entries, "ghost")

        report = await producer.reclaim(queue, "rescuer", min_idle_ms=0, max_deliveries=5, count=10)
        (taken,) = report.deliveries
        assert taken.job_id == job_id and taken.attempt == abandoned.attempt + 1
        assert not await producer.succeed(abandoned, "stale")  # fenced out
        assert await producer.succeed(taken, "fresh")
        job = await producer.get(queue, job_id)
        assert job is not None and job.status is JobStatus.SUCCEEDED and job.result == "fresh"
        types = [e.event.value for e in await producer.events(queue, job_id)]
        assert "job.reclaimed" in types and types[-1] == "job.succeeded"
        assert (await cluster.xpending(producer.keys(queue).jobs, CONSUMER_GROUP))["pending"] == 0


async def test_scripts_are_loaded_again_on_nodes_that_lost_them(
    redis_cluster: LocalCluster,
    queues: tuple[str, str],
    producer: Producer,
    settings: Settings,
) -> None:
    """What a restarted node or a promoted replica looks like: an empty script cache. Both
    the pipelined calls and the single ones load the script and go on, running each once."""

    def flush_scripts() -> None:
        for port in redis_cluster.ports:
            with redis.Redis(HOST, port) as node:
                node.script_flush()

    queue = queues[0]
    await producer.ensure_group(queue)
    flush_scripts()
    ids = await producer.submit_many(
        [SubmitRequest(type="noop", queue=queue, payload={"i": i}) for i in range(5)]
    )
    flush_scripts()
    ids.append((await producer.submit(SubmitRequest(type="noop", queue=queue))).job_id)
    assert len(set(ids)) == 6
    assert await producer.redis.xlen(producer.keys(queue).jobs) == 6
    flush_scripts()
    worker = await drain(settings, queue)
    assert worker.jobs_complete == 6
    terminal = await wait_for_terminal(producer.redis, queue, set(ids), DEADLINE_S)
    assert all(events == ["job.succeeded"] for events in terminal.values())


def sse_events(body: str) -> list[dict[str, Any]]:
    events = []
    for block in body.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            name, _, value = line.partition(":")
            if name in {"id", "event", "data"}:
                fields[name] = value.strip()
        if "event" in fields:
            events.append(fields)
    return events


async def test_sse_streams_jobs_of_both_nodes_to_their_terminal_event(
    queues: tuple[str, str], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = gateway_app(settings)
    async with LifespanManager(app):
        gw: Gateway = app.state.gateway
        assert len(gw.hub.stream_groups()) == 2  # one XREAD per slot
        transport = httpx.ASGITransport(app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            subscribed = asyncio.Event()
            subscribe_job = gw.hub.subscribe_job

            def subscribe_and_tell(queue: str, job_id: str) -> Subscriber:
                sub = subscribe_job(queue, job_id)
                if gw.hub.subscriber_count == len(queues):
                    subscribed.set()
                return sub

            monkeypatch.setattr(gw.hub, "subscribe_job", subscribe_and_tell)
            jobs = []
            for queue in queues:
                response = await http.post(
                    "/v1/jobs",
                    json={"type": "sleep", "queue": queue, "payload": {"seconds": 0.1}},
                    headers=A,
                )
                assert response.status_code == 202, response.text
                jobs.append(response.json())
            streams = [
                asyncio.create_task(http.get(job["links"]["events"], timeout=DEADLINE_S))
                for job in jobs
            ]
            # Both subscribers are registered with the hub before any job runs, so what
            # they receive after the snapshot comes live from the per-slot readers.
            async with asyncio.timeout(DEADLINE_S):
                await subscribed.wait()
            for queue in queues:
                await drain(settings, queue)
            async with asyncio.timeout(DEADLINE_S):
                responses = await asyncio.gather(*streams)
            # Readiness and the queue gauges read every queue, i.e. several nodes.
            assert (await http.get("/readyz")).status_code == 200
            metrics = (await http.get("/metrics")).text
            assert "conveyor_gateway_redis_up 1.0" in metrics

    for job, response in zip(jobs, responses, strict=True):
        assert response.status_code == 200
        events = sse_events(response.text)
        names = [e["event"] for e in events]
        assert names[0] == "snapshot" and names[-1] == "job.succeeded", names
        assert "job.started" in names
        live = [e for e in events if e["event"] != "snapshot"]
        assert all(json.loads(e["data"])["job_id"] == job["id"] for e in live)


async def test_a_worker_rides_out_a_restart_of_the_whole_cluster(
    tmp_path: Path, settings_factory: Callable[..., Settings], queue_name: str
) -> None:
    """Every node down at once: calls fail with a ConnectionError (a RedisError, which the
    worker's loop waits out) rather than redis-py's RedisClusterException, and the same
    clients find the cluster again when it is back."""
    with local_cluster(tmp_path / "cluster") as own:
        settings = settings_factory(
            redis_url=own.url, queues=[queue_name], handlers="tests.handlers", block_ms=200
        )
        client = redis_from_url(own.url, socket_timeout=5, socket_connect_timeout=1)
        producer = Producer(client, settings)
        worker = ConveyorWorker(settings, connect(settings), queue=queue_name, handle_signals=False)
        saw_outage = asyncio.Event()
        unavailable = worker.lanes.redis_unavailable

        async def note_outage(exc: RedisError) -> None:
            saw_outage.set()
            await unavailable(exc)

        worker.lanes.redis_unavailable = note_outage  # type: ignore[method-assign]
        try:
            before = await producer.submit(SubmitRequest(type="noop", queue=queue_name))
            async with running(worker):
                await wait_for_terminal(client, queue_name, {before.job_id}, DEADLINE_S)
                for node in own.nodes:
                    await asyncio.to_thread(node.stop)
                with pytest.raises(ConnectionError):
                    await producer.submit(SubmitRequest(type="noop", queue=queue_name))
                async with asyncio.timeout(DEADLINE_S):
                    await saw_outage.wait()
                await asyncio.to_thread(own.restart)
                after = await producer.submit(SubmitRequest(type="noop", queue=queue_name))
                terminal = await wait_for_terminal(
                    client, queue_name, {before.job_id, after.job_id}, DEADLINE_S
                )
            assert terminal == {
                before.job_id: ["job.succeeded"],
                after.job_id: ["job.succeeded"],
            }
        finally:
            await client.aclose()


async def test_consumers_gone_for_long_are_removed_on_a_cluster_too(
    settings: Settings, cluster: aioredis.Redis, queues: tuple[str, str]
) -> None:
    queue = queues[1]
    keys = QueueKeys(queue)
    cleanup = settings.model_copy(update={"consumer_idle_cleanup_s": 0.05})
    await Producer(cluster, cleanup).ensure_group(queue)
    await cluster.xgroup_createconsumer(keys.jobs, CONSUMER_GROUP, "ghost")
    await cluster.hset(keys.consumer_seen(), "ghost", "1")  # last seen in 1970
    worker = ConveyorWorker(cleanup, connect(cleanup), queue=queue, handle_signals=False)
    async with running(worker):

        async def ghost_gone() -> bool:
            consumers = await cluster.xinfo_consumers(keys.jobs, CONSUMER_GROUP)
            names = {c["name"] for c in consumers}
            return not names & {"ghost", b"ghost"}

        await until(
            ghost_gone, redis=cluster, stream=keys.events, timeout_s=10, what="ghost's removal"
        )
    assert not await cluster.hexists(keys.consumer_seen(), "ghost")


async def test_a_flow_over_two_masters_releases_its_parent_once_despite_a_killed_consumer(
    queues: tuple[str, str], producer: Producer, settings: Settings, tmp_path: Path
) -> None:
    """The fan-in of a parent whose children live on another master: no script sees both,
    each child's end reaches the parent as a flow task, counted once."""
    assert settings.redis_url is not None
    started: list[ManagedProcess] = []

    def spawn(name: str, queue: str | None = None, **env: str) -> ManagedProcess:
        environ = conveyor_env(
            **FAST,
            CONVEYOR_REDIS_URL=settings.redis_url or "",
            CONVEYOR_QUEUES=",".join(queues),
            CONVEYOR_HANDLERS="tests.handlers",
            **env,
        )
        process = start_worker(
            environ, queue=queue or queues[0], log_dir=tmp_path, name=name, cwd=REPO
        )
        started.append(process)
        return process

    try:
        await fan_in_survives_a_killed_consumer(producer, queues, spawn, tmp_path)
    finally:
        for process in started:
            process.stop(grace_s=5)
