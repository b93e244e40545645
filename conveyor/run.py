"""`conveyor run`: the whole stack on one machine, in the foreground, until Ctrl-C.

Start order is dependency order (Redis, S3, consumers, gateway) and stop order is the
reverse, so no worker loses its Redis while it still has a job to finish. Every child runs
in its own session and is stopped here by pid: a terminal's Ctrl-C reaches only us, and we
decide the order. If any child dies on its own the stack is incomplete, so everything stops
and we exit 1.

Signals only set a flag (raising from a handler could land between fork and recording a
pid, leaking a child). A second Ctrl-C SIGKILLs every process we know of, so a stuck start
or a slow graceful shutdown can always be cut short without leaving anything behind.

What a restart must not change is kept in the data directory (conveyor/data_dir.py): the
dev API key and the embedded servers' ports, and an `env` file with which another shell's
worker, CLI or client joins the stack.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Protocol, TypeVar

from conveyor.data_dir import DataDir
from conveyor.embedded_redis import EmbeddedRedis, EmbeddedRedisError, find_redis_server
from conveyor.embedded_s3 import EmbeddedS3, EmbeddedS3Error, weed_binary
from conveyor.process import ManagedProcess, port_open
from schemas.settings import Settings

PREFERRED_REDIS_PORT = 6380  # beside a system Redis on 6379, never on it
GATEWAY_STOP_GRACE_S = 10.0
GATEWAY_READY_DEADLINE_S = 60.0
LOOPBACK = "127.0.0.1"
# How a child we asked to stop may end: uvicorn, for one, re-raises the SIGTERM it handled
# once it has shut down, so a clean stop of the gateway is a death by that signal.
STOPPED_CLEANLY = (0, -signal.SIGTERM, -signal.SIGINT)


class Stopped(Exception):
    """Ctrl-C or SIGTERM arrived, or a child died: unwind and stop everything."""


class _Server(Protocol):
    """What EmbeddedRedis and EmbeddedS3 have in common."""

    @property
    def pid(self) -> int | None: ...

    def alive(self) -> bool: ...

    def start(self) -> object: ...

    def stop(self) -> object: ...


S = TypeVar("S", bound=_Server)


class _ForegroundProcess(ManagedProcess):
    """A ManagedProcess whose output is ours (inherited), so the user sees every log."""

    def start(self) -> _ForegroundProcess:
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        return self


def _say(message: str) -> None:
    # A closed terminal (EIO) must not cut a stop short: the stop matters, not the telling.
    with contextlib.suppress(OSError):
        print(f"conveyor: {message}", flush=True)


def _pid_of(server: _Server) -> int | None:
    try:
        return server.pid
    except RuntimeError:  # EmbeddedRedis before its process exists
        return None


def _connect_host(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


def gateway_url(settings: Settings) -> str:
    host = _connect_host(settings.host)
    return f"http://{f'[{host}]' if ':' in host else host}:{settings.port}"


def missing_embedded(settings: Settings) -> list[str]:
    """The embedded servers this configuration needs and this installation cannot start."""
    missing = []
    if not settings.redis_url:
        try:
            find_redis_server()
        except EmbeddedRedisError:
            missing.append("Redis (CONVEYOR_REDIS_URL is unset and no redis-server is installed)")
    if not settings.s3_endpoint:
        try:
            weed_binary()
        except EmbeddedS3Error:
            missing.append("S3 (CONVEYOR_S3_ENDPOINT is unset and SeaweedFS is not installed)")
    return missing


@dataclass
class Stack:
    """What `run` started: watched for unexpected deaths, stopped in reverse."""

    settings: Settings
    stop_requested: threading.Event = field(default_factory=threading.Event)
    servers: list[tuple[str, _Server]] = field(default_factory=list)
    children: list[ManagedProcess] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    # What the embedded servers and the dev key made: the children's environment has it
    # too, and the `env` file (with what was configured) is written from it.
    made: dict[str, str] = field(default_factory=dict)

    @property
    def data(self) -> DataDir:
        return DataDir(self.settings.data_dir)

    def provide(self, **values: str) -> None:
        self.env.update(values)
        self.made.update(values)

    def check(self) -> None:
        if self.stop_requested.is_set():
            raise Stopped("stop requested")
        for child in self.children:
            if not child.alive():
                code = child.proc.returncode if child.proc else None
                raise Stopped(f"{child.name} pid={child.pid} exited with code {code}")
        for name, server in self.servers:
            if not server.alive():
                raise Stopped(f"{name} pid={_pid_of(server)} exited")

    def start_redis(self) -> None:
        data_dir = self.settings.data_dir / "redis"
        kept = self.data.port("redis")
        wanted = kept or PREFERRED_REDIS_PORT
        preferred = None if port_open(LOOPBACK, wanted) else wanted
        try:
            redis = self._start_server("redis", EmbeddedRedis(data_dir, port=preferred))
        except EmbeddedRedisError as exc:
            if preferred is None or "Address already in use" not in str(exc):
                raise
            self.servers.pop()  # taken after all: any free port will do
            redis = self._start_server("redis", EmbeddedRedis(data_dir))
        assert redis.port is not None
        self._kept_port("redis", kept, redis.port)
        self.provide(CONVEYOR_REDIS_URL=redis.url)
        _say(f"started redis pid={redis.pid} url={redis.url} data={data_dir}")

    def start_s3(self) -> None:
        s = self.settings

        def server(port: int | None) -> EmbeddedS3:
            return EmbeddedS3(
                s.data_dir / "s3",
                port=port,
                access_key=s.s3_access_key,
                secret_key=s.s3_secret_key,
                bucket=s.s3_bucket,
            )

        kept = self.data.port("s3")
        preferred = kept if kept and not port_open(LOOPBACK, kept) else None
        try:
            s3 = self._start_server("s3", server(preferred))
        except EmbeddedS3Error as exc:
            if preferred is None or "address already in use" not in str(exc).lower():
                raise
            self.servers.pop()
            s3 = self._start_server("s3", server(None))
        assert s3.port is not None
        self._kept_port("s3", kept, s3.port)
        self.provide(
            CONVEYOR_S3_ENDPOINT=s3.endpoint,
            CONVEYOR_S3_ACCESS_KEY=s.s3_access_key,
            CONVEYOR_S3_SECRET_KEY=s.s3_secret_key,
            CONVEYOR_S3_BUCKET=s.s3_bucket,
            CONVEYOR_S3_SECURE="false",
        )
        _say(f"started s3 pid={s3.pid} endpoint={s3.endpoint} data={s.data_dir / 's3'}")

    def _kept_port(self, server: str, kept: int | None, port: int) -> None:
        if kept is not None and port != kept:
            _say(f"{server}: port {kept} is taken now, so it moved to {port}")
        self.data.remember_port(server, port)

    def joining_env(self, api_key: str) -> dict[str, str]:
        """What a worker, the CLI or a client in another shell needs to join this stack:
        the servers and keys this run made, else those configured."""
        s = self.settings
        configured = {
            "CONVEYOR_REDIS_URL": s.redis_url or "",
            "CONVEYOR_S3_ENDPOINT": s.s3_endpoint or "",
            "CONVEYOR_S3_ACCESS_KEY": s.s3_access_key,
            "CONVEYOR_S3_SECRET_KEY": s.s3_secret_key,
            "CONVEYOR_S3_BUCKET": s.s3_bucket,
            "CONVEYOR_S3_SECURE": "true" if s.s3_secure else "false",
            "CONVEYOR_API_KEYS": ",".join(f"{k}={t}" for k, t in s.api_keys.items()),
        }
        return {
            **configured,
            **self.made,
            "CONVEYOR_URL": gateway_url(s),
            "CONVEYOR_API_KEY": api_key,
        }

    def write_env_file(self, api_key: str) -> str:
        """Writes the `env` file; returns the shell line that reads it."""
        path = self.data.env_path
        source = f"set -a; . {shlex.quote(str(path))}; set +a"
        header = (
            f"The stack `conveyor run` (pid {os.getpid()}) runs, for another shell to join:\n"
            f"  {source}\n"
            "then `conveyor worker --handlers mymodule`, `conveyor submit ...`, a client.\n"
            "It holds secrets: keep it private (mode 0600)."
        )
        self.data.write_env(self.joining_env(api_key), header=header)
        return source

    def _start_server(self, name: str, server: S) -> S:
        # Recorded before it starts, so that a forced stop mid-start still finds its pid.
        self.servers.append((name, server))
        server.start()
        return server

    def start_child(self, name: str, *args: str) -> None:
        argv = [sys.executable, "-m", "conveyor.cli", *args]
        child = _ForegroundProcess(name, argv, env=self.env).start()
        self.children.append(child)
        _say(f"started {name} pid={child.pid}")

    def wait_for_gateway(self) -> None:
        host, port = _connect_host(self.settings.host), self.settings.port
        deadline = time.monotonic() + GATEWAY_READY_DEADLINE_S
        while not port_open(host, port):
            self.check()
            if time.monotonic() > deadline:
                raise Stopped(f"the gateway did not listen on {host}:{port} in time")
            self.stop_requested.wait(0.1)

    def kill_all(self) -> None:
        """SIGKILL every process group we started; safe inside a signal handler."""
        pids = [c.pid for c in self.children if c.proc is not None]
        pids += [pid for _, server in self.servers if (pid := _pid_of(server)) is not None]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)

    def stop_all(self) -> None:
        # Workers and the gateway all at once, so that their grace periods overlap. One
        # SIGTERM each: a second one commonly means "hurry" to a worker, cutting jobs short.
        signalled = time.monotonic()
        for child in self.children:
            child.signal(signal.SIGTERM)
        for child in self.children:
            worker = child.name.startswith("worker")
            grace = self.settings.shutdown_grace_s + 5 if worker else GATEWAY_STOP_GRACE_S
            overdue = False
            if child.proc is not None:
                try:
                    child.proc.wait(timeout=max(0.0, signalled + grace - time.monotonic()))
                except subprocess.TimeoutExpired:
                    overdue = True
            code = child.stop(grace_s=0)  # SIGKILLs the group if anything is left
            if overdue:
                how = f" (killed: still running {grace:.0f}s after SIGTERM)"
            elif code in STOPPED_CLEANLY or code is None:
                how = ""
            else:
                how = f" code={code}"
            _say(f"stopped {child.name} pid={child.pid}{how}")
        for name, server in reversed(self.servers):
            try:
                server.stop()
            except Exception as exc:  # keep stopping the others
                _say(f"stopping {name} pid={_pid_of(server)} failed: {exc}")
            else:
                _say(f"stopped {name} pid={_pid_of(server)}")


@contextlib.contextmanager
def _signals_stop(stack: Stack) -> Iterator[None]:
    def handler(signum: int, _frame: FrameType | None) -> None:
        if not stack.stop_requested.is_set():
            stack.stop_requested.set()
            # os.write, not print: print is not reentrant and may be mid-call right now.
            with contextlib.suppress(OSError):
                os.write(1, b"conveyor: stopping (Ctrl-C again to kill everything at once)\n")
        else:
            stack.kill_all()

    # SIGHUP too: a closed terminal window would otherwise end us and leave the children,
    # each in a session of its own, running.
    stopping = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, handler) for sig in stopping}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run(settings: Settings) -> int:
    """Start the stack, block until a signal or a child's death, stop it all; exit code."""
    if missing := missing_embedded(settings):
        for what in missing:
            _say(f"cannot start {what}")
        _say(
            "install the embedded servers with `pip install 'conveyor[embedded]'` (`make run` "
            "does), or point CONVEYOR_REDIS_URL and CONVEYOR_S3_ENDPOINT at your own"
        )
        return 1
    stack = Stack(settings)
    with _signals_stop(stack):
        try:
            _start(stack)
            while True:
                stack.check()
                stack.stop_requested.wait(0.2)
        except Stopped as reason:
            if stack.stop_requested.is_set():
                return 0
            _say(f"stopping: {reason}")
            return 1
        except Exception as exc:  # e.g. a server that would not start: stop the rest
            if stack.stop_requested.is_set():
                return 0  # killed mid-start by a second Ctrl-C: the failure is ours
            _say(f"stopping: {type(exc).__name__}: {exc}")
            return 1
        finally:
            stack.stop_all()


def _start(stack: Stack) -> None:
    settings = stack.settings
    if not settings.redis_url:
        stack.start_redis()
    stack.check()
    if not settings.s3_endpoint:
        stack.start_s3()
    stack.check()
    dev_key = None
    if not settings.api_keys:
        dev_key = stack.data.api_key()
        stack.provide(CONVEYOR_API_KEYS=f"{dev_key}=dev")
    # Children log to our stdout, which is often a pipe: don't let them buffer.
    stack.env["PYTHONUNBUFFERED"] = "1"
    # An arq worker reads one queue: each configured queue gets its own consumers.
    for queue in settings.queues:
        for n in range(1, settings.consumers + 1):
            name = f"worker-{n}" if len(settings.queues) == 1 else f"worker-{queue}-{n}"
            stack.start_child(name, "worker", "--queue", queue)
    stack.start_child("gateway", "gateway")
    stack.wait_for_gateway()
    url = gateway_url(settings)
    if dev_key:
        source = stack.write_env_file(dev_key)
        _say(f"dashboard {url}/?key={dev_key}")
        _say(
            f"API key {dev_key} (tenant dev, kept in {stack.data.api_key_path}; "
            "set CONVEYOR_API_KEYS to choose your own)"
        )
    else:
        configured = settings.api_keys
        key = settings.api_key if settings.api_key in configured else next(iter(configured))
        source = stack.write_env_file(key)
        _say(f"dashboard {url}/ (API keys: those in CONVEYOR_API_KEYS)")
    _say(f"join this stack from another shell: {source}")
    _say("press Ctrl-C to stop")
