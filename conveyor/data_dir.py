"""What `conveyor run` keeps in CONVEYOR_DATA_DIR from one run to the next, besides the
embedded servers' own data: the dev API key, the ports it chose, and the `env` file that lets
another shell join the running stack.

    api-key     the dev key (tenant `dev`), made once; mode 0600
    ports.json  {"redis": 6380, "s3": 41873}: the ports last used, tried first next time
    env         CONVEYOR_* lines for `set -a; . .conveyor/env; set +a`; mode 0600

A key and ports that change at every start would break every shell, worker, bookmark and
client configured against the last run; keeping them makes a restart invisible to those.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
from collections.abc import Mapping
from pathlib import Path

API_KEY_FILE = "api-key"
PORTS_FILE = "ports.json"
ENV_FILE = "env"


class DataDir:
    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def env_path(self) -> Path:
        return self.path / ENV_FILE

    @property
    def api_key_path(self) -> Path:
        return self.path / API_KEY_FILE

    def api_key(self) -> str:
        """The dev API key of the earlier runs, or a new one, kept for the next."""
        with contextlib.suppress(FileNotFoundError):
            kept = self.api_key_path.read_text().strip()
            if kept:
                os.chmod(self.api_key_path, 0o600)  # one copied in by hand, say
                return kept
        key = secrets.token_urlsafe(24)
        self._write_private(API_KEY_FILE, key + "\n")
        return key

    def port(self, server: str) -> int | None:
        """The port `server` used last time, if one was recorded."""
        port = self._ports().get(server)
        return port if isinstance(port, int) and 0 < port < 65536 else None

    def remember_port(self, server: str, port: int) -> None:
        ports = self._ports()
        if ports.get(server) != port:
            self._write(PORTS_FILE, json.dumps({**ports, server: port}, sort_keys=True) + "\n")

    def write_env(self, values: Mapping[str, str], *, header: str) -> None:
        """`NAME=value` lines, each value quoted for a POSIX shell where it needs it."""
        lines = [f"# {line}".rstrip() for line in header.splitlines()]
        lines += [f"{name}={shlex.quote(value)}" for name, value in values.items()]
        self._write_private(ENV_FILE, "\n".join(lines) + "\n")

    def _ports(self) -> dict[str, object]:
        try:
            ports = json.loads((self.path / PORTS_FILE).read_text())
        except (FileNotFoundError, ValueError):  # never written, or damaged: choose again
            return {}
        return ports if isinstance(ports, dict) else {}

    def _write(self, name: str, text: str, mode: int = 0o644) -> None:
        # Written beside and renamed over, so a reader never sees half a file.
        self.path.mkdir(parents=True, exist_ok=True)
        partial = self.path / f".{name}.tmp"
        with contextlib.suppress(FileNotFoundError):  # a leftover keeps its own mode
            partial.unlink()
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(partial, mode)  # umask may have cut O_CREAT's mode
        os.replace(partial, self.path / name)

    def _write_private(self, name: str, text: str) -> None:
        """For secrets: created 0600 before anything is written into it."""
        self._write(name, text, 0o600)
