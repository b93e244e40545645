"""Conveyor through Redis Sentinel: a real sentinel (redis-server --sentinel) watching our own
master; the producer and a worker find the master through it by service name."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from consumers.worker import ConveyorWorker, connect
from conveyor.embedded_redis import EmbeddedRedis, find_redis_server
from conveyor.process import ManagedProcess, free_port, wait_until
from producer import Producer
from producer.connection import redis_from_url
from schemas import Settings, SubmitRequest
from tests.integration.helpers import wait_for_terminal

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
SERVICE = "conveyor-test"


@pytest.fixture(scope="module")
def sentinel_url(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    workdir: Path = tmp_path_factory.mktemp("sentinel")
    port = free_port(HOST)
    config = workdir / "sentinel.conf"  # a sentinel rewrites its config: it must be a file
    config.write_text(
        f"port {port}\nbind {HOST}\nprotected-mode no\ndir {workdir}\n"
        f"sentinel monitor {SERVICE} {HOST} {redis_server.port} 1\n"
    )
    process = ManagedProcess(
        "sentinel",
        [find_redis_server(), str(config), "--sentinel"],
        cwd=workdir,
        log_path=workdir / "sentinel.log",
    ).start()
    try:

        def knows_master() -> bool:
            assert process.alive(), process.log_tail()
            try:
                with redis.Redis(HOST, port, socket_timeout=1) as sentinel:
                    return bool(sentinel.sentinel_get_master_addr_by_name(SERVICE))
            except redis.ConnectionError:
                return False

        wait_until(knows_master, 20, "the sentinel to answer for its master")
        yield f"redis+sentinel://{HOST}:{port}/{SERVICE}/0"
    finally:
        process.stop()


async def test_submit_and_run_through_sentinel(
    sentinel_url: str, settings_factory: Callable[..., Settings], queue_name: str
) -> None:
    settings = settings_factory(redis_url=sentinel_url, handlers="tests.handlers", block_ms=200)
    client = redis_from_url(sentinel_url, socket_timeout=5)
    try:
        producer = Producer(client, settings)
        ids = await producer.submit_many(
            [SubmitRequest(type="noop", queue=queue_name, payload={"i": i}) for i in range(10)]
        )
        worker = ConveyorWorker(
            settings, connect(settings), queue=queue_name, handle_signals=False, burst=True
        )
        await worker.async_run()
        await worker.close()
        assert worker.jobs_complete == 10
        terminal = await wait_for_terminal(client, queue_name, set(ids), 10)
        assert all(events == ["job.succeeded"] for events in terminal.values())
    finally:
        await client.aclose()
