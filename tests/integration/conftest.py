"""Fixtures of the integration tests: settings for the test's own queue, its producer, a
`Driver` (tests/integration/helpers.py) for it, real worker processes on it, and a module's
`stack` (a gateway and a worker) for the client and the CLI."""

from __future__ import annotations

import signal
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from conveyor.embedded_redis import EmbeddedRedis
from conveyor.gateway_app import gateway_app
from conveyor.process import ManagedProcess, free_port
from producer import Producer
from schemas import Settings
from tests.fixtures.processes import HOST, REPO, conveyor_env, start_gateway, start_worker
from tests.integration.helpers import Driver


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory(handlers="tests.handlers", backoff_base_s=0.05, backoff_max_s=0.2)


@pytest.fixture
async def producer(redis: aioredis.Redis, settings: Settings) -> Producer:
    return Producer(redis, settings)


@pytest.fixture
async def driver(
    producer: Producer, redis: aioredis.Redis, queue_name: str
) -> AsyncIterator[Driver]:
    yield Driver(producer, redis, queue_name)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    """The gateway as `conveyor gateway` builds it, with its lifespan, for the module's
    `settings`."""
    application = gateway_app(settings)
    async with LifespanManager(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of `app`, in process (an app's exception is a 500, as served)."""
    transport = httpx.ASGITransport(app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        yield http


# Worker processes that notice a dead consumer within about a second.
FAST = {
    "CONVEYOR_VISIBILITY_TIMEOUT_S": "1",
    "CONVEYOR_RECLAIM_INTERVAL_S": "0.1",
    "CONVEYOR_BACKOFF_BASE_S": "0.05",
    "CONVEYOR_SHUTDOWN_GRACE_S": "2",
}


@pytest.fixture
def spawn_worker(
    redis_server: EmbeddedRedis, queue_name: str, tmp_path: Path
) -> Iterator[Callable[..., ManagedProcess]]:
    started: list[ManagedProcess] = []

    def spawn(name: str, queue: str | None = None, **env: str) -> ManagedProcess:
        """A worker of the test's queue, or of `queue` beside it."""
        environ = conveyor_env(
            **FAST,
            CONVEYOR_REDIS_URL=redis_server.url,
            CONVEYOR_QUEUES=",".join(dict.fromkeys([queue_name, queue or queue_name])),
            CONVEYOR_HANDLERS="tests.handlers",
        )
        environ |= env  # may replace one of FAST
        process = start_worker(
            environ, queue=queue or queue_name, log_dir=tmp_path, name=name, cwd=REPO
        )
        started.append(process)
        return process

    yield spawn
    for process in started:
        process.signal(signal.SIGCONT)
        process.stop(grace_s=5)


@dataclass
class Stack:
    """A gateway and a worker process on their own queue, for a whole test module: what
    the Python client and the CLI talk to."""

    url: str
    queue: str
    env: dict[str, str]
    gateway: ManagedProcess
    worker: ManagedProcess


API_KEYS = {"key-a": "acme", "key-b": "globex"}


@pytest.fixture(scope="module")
def stack(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    queue = f"stack-{uuid.uuid4().hex[:8]}"
    log_dir = tmp_path_factory.mktemp("stack")
    env = conveyor_env(
        **FAST,
        CONVEYOR_REDIS_URL=redis_server.url,
        CONVEYOR_QUEUES=queue,
        CONVEYOR_HANDLERS="tests.handlers",
        CONVEYOR_API_KEYS=",".join(f"{key}={tenant}" for key, tenant in API_KEYS.items()),
        CONVEYOR_TOKEN_SECRET="stack-secret",
        # Every job.progress goes out live, so a stream can be compared with the history.
        CONVEYOR_SSE_PROGRESS_INTERVAL_S="0",
        CONVEYOR_LOG_LEVEL="WARNING",
    )
    port = free_port()
    gateway = start_gateway(env, port=port, log_dir=log_dir, cwd=REPO)
    worker = start_worker(env, queue=queue, log_dir=log_dir, cwd=REPO)
    try:
        yield Stack(f"http://{HOST}:{port}", queue, env, gateway, worker)
    finally:
        worker.stop(grace_s=5)
        gateway.stop()
