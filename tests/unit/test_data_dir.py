"""What `conveyor run` keeps between runs: the dev key, the ports, the env file."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from conveyor.data_dir import DataDir


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_dev_key_is_made_once_private_and_kept(tmp_path: Path) -> None:
    data = DataDir(tmp_path / "data")
    key = data.api_key()
    assert len(key) >= 32
    assert DataDir(tmp_path / "data").api_key() == key
    assert mode(data.api_key_path) == 0o600
    os.chmod(data.api_key_path, 0o644)  # copied in by hand, say
    assert data.api_key() == key and mode(data.api_key_path) == 0o600


def test_ports_are_remembered_per_server_and_damage_is_forgotten(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    assert data.port("redis") is None
    data.remember_port("redis", 6380)
    data.remember_port("s3", 41873)
    assert (DataDir(tmp_path).port("redis"), DataDir(tmp_path).port("s3")) == (6380, 41873)
    (tmp_path / "ports.json").write_text("{not json")
    assert data.port("redis") is None
    (tmp_path / "ports.json").write_text('{"redis": "6380", "s3": 70000}')
    assert (data.port("redis"), data.port("s3")) == (None, None)


VALUES = {
    "CONVEYOR_REDIS_URL": "redis://127.0.0.1:6380/0",
    "CONVEYOR_S3_SECRET_KEY": "it's $ecret; `x` \"y\"",
    "CONVEYOR_API_KEYS": "c2VjcmV0==dev,other=acme",
}


def test_the_env_file_is_private_and_reads_back_in_a_shell(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    data.write_env(VALUES, header="first line\nsecond line")
    assert mode(data.env_path) == 0o600
    assert data.env_path.read_text().startswith("# first line\n# second line\n")
    shell = subprocess.run(
        ["bash", "-c", f'set -a; . "{data.env_path}"; set +a; env -0'],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        check=True,
    )
    exported = dict(item.split("=", 1) for item in shell.stdout.decode().split("\0") if item)
    assert {name: exported[name] for name in VALUES} == VALUES
