"""`conveyor submit` (into the store: no gateway configured) and `conveyor inspect`, run as a
user runs them, on real Redis."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conveyor.embedded_redis import EmbeddedRedis
from tests.fixtures.processes import REPO, conveyor_env, start_worker

pytestmark = pytest.mark.integration


def conveyor(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conveyor.cli", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_submit_wait_prints_every_event_and_exits_by_the_outcome(
    redis_server: EmbeddedRedis, queue_name: str, tmp_path: Path
) -> None:
    env = conveyor_env(
        CONVEYOR_REDIS_URL=redis_server.url,
        CONVEYOR_QUEUES=queue_name,
        CONVEYOR_HANDLERS="tests.handlers",
    )
    worker = start_worker(env, queue=queue_name, log_dir=tmp_path, cwd=REPO)
    try:
        ok = conveyor(env, "submit", "sleep", "--payload", '{"seconds": 0.2, "steps": 2}', "--wait")
        failed = conveyor(env, "submit", "permanent", "--wait")
    finally:
        worker.stop(grace_s=5)
    assert ok.returncode == 0, ok.stderr
    job_id, *events = ok.stdout.splitlines()
    kinds = [line.split()[1] for line in events]
    assert kinds == ["job.queued", "job.started", "job.progress", "job.progress", "job.succeeded"]
    assert len(job_id) == 32
    assert failed.returncode == 1, failed.stderr
    assert [line.split()[1] for line in failed.stdout.splitlines()[1:]][-1] == "job.failed"
    refused = conveyor(env, "submit", "sleep", "--payload", '{"secs": 1}')  # as the gateway would
    assert refused.returncode == 2 and refused.stdout == ""
    assert "payload.secs: Extra inputs are not permitted" in refused.stderr
    inspect = conveyor(env, "inspect", "--queue", queue_name)
    assert inspect.returncode == 0, inspect.stderr
    assert f"queue {queue_name!r}" in inspect.stdout
    assert "stream entries   0" in inspect.stdout


def test_submit_wait_prints_the_steps_of_a_multi_step_job(
    redis_server: EmbeddedRedis, queue_name: str, tmp_path: Path
) -> None:
    env = conveyor_env(
        CONVEYOR_REDIS_URL=redis_server.url,
        CONVEYOR_QUEUES=queue_name,
        CONVEYOR_HANDLERS="tests.handlers",
        CONVEYOR_BACKOFF_BASE_S="0.05",
    )
    worker = start_worker(env, queue=queue_name, log_dir=tmp_path, cwd=REPO)
    payload = f'{{"path": "{tmp_path / "runs"}", "fail_third": 1}}'
    try:
        done = conveyor(env, "submit", "pipeline", "--payload", payload, "--wait")
    finally:
        worker.stop(grace_s=5)
    assert done.returncode == 0, done.stderr
    steps = [line for line in done.stdout.splitlines()[1:] if line.split()[1] == "job.step"]
    said = [
        (words[2], next(w for w in words if w.startswith("step=")), words[-2])
        for words in (line.split() for line in steps)
    ]
    assert ("attempt=1", 'step="one"', 'state="started"') in said
    assert ("attempt=2", 'step="one"', 'state="restored"') in said
    assert ("attempt=2", 'step="three"', 'state="succeeded"') in said


def test_submit_into_the_store_takes_a_delay_and_an_idempotency_key(
    redis_server: EmbeddedRedis, queue_name: str
) -> None:
    env = conveyor_env(
        CONVEYOR_REDIS_URL=redis_server.url,
        CONVEYOR_QUEUES=queue_name,
        CONVEYOR_HANDLERS="tests.handlers",
    )
    args = ["submit", "noop", "--delay", "3600", "--idempotency-key", "order-1"]
    first, again = conveyor(env, *args), conveyor(env, *args)
    assert first.returncode == 0, first.stderr
    assert again.stdout == first.stdout and len(first.stdout.strip()) == 32
    inspect = conveyor(env, "inspect", "--queue", queue_name)
    assert "delayed          1" in inspect.stdout
