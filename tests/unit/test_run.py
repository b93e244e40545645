"""`conveyor run` before it starts anything: what it needs and does not have, it says."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import pytest

from conveyor import run as run_module
from conveyor.embedded_redis import EmbeddedRedisError
from conveyor.embedded_s3 import EmbeddedS3Error
from schemas.settings import Settings


def no_redis() -> NoReturn:
    raise EmbeddedRedisError("no redis-server found")


def no_weed() -> NoReturn:
    raise EmbeddedS3Error("no `weed` binary")


@pytest.fixture
def without_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_module, "find_redis_server", no_redis)
    monkeypatch.setattr(run_module, "weed_binary", no_weed)


def settings(tmp_path: Path, **values: str) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path / "data", **values)  # type: ignore[call-arg]


@pytest.mark.usefixtures("without_embedded")
def test_without_the_embedded_extra_it_says_what_to_install_and_starts_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("CONVEYOR_REDIS_URL", "CONVEYOR_S3_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert run_module.run(settings(tmp_path)) == 1
    out = capsys.readouterr().out
    assert "cannot start Redis (CONVEYOR_REDIS_URL is unset" in out
    assert "cannot start S3 (CONVEYOR_S3_ENDPOINT is unset" in out
    assert "pip install 'conveyor[embedded]'" in out
    assert "started" not in out and not (tmp_path / "data").exists()


@pytest.mark.usefixtures("without_embedded")
def test_configured_servers_need_no_embedded_ones(tmp_path: Path) -> None:
    configured = settings(
        tmp_path, redis_url="redis://127.0.0.1:6379/0", s3_endpoint="127.0.0.1:9000"
    )
    assert run_module.missing_embedded(configured) == []
    assert run_module.missing_embedded(settings(tmp_path, redis_url="redis://r:6379/0")) == [
        "S3 (CONVEYOR_S3_ENDPOINT is unset and SeaweedFS is not installed)"
    ]
