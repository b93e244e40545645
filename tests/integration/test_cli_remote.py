"""The `conveyor` commands that go through a gateway (CONVEYOR_URL, CONVEYOR_API_KEY), run as
a user runs them, against a real gateway and worker (`stack`)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from importlib.metadata import version

import pytest

from tests.fixtures.processes import REPO, conveyor_env
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration


def conveyor(stack: Stack | None, *args: str) -> subprocess.CompletedProcess[str]:
    """The command with the gateway configured, or with nothing configured at all."""
    env = conveyor_env()
    if stack is not None:
        env |= {"CONVEYOR_URL": stack.url, "CONVEYOR_API_KEY": "key-a"}  # and no Redis URL
    return subprocess.run(
        [sys.executable, "-m", "conveyor.cli", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def kinds(stdout: str) -> list[str]:
    return [line.split()[1] for line in stdout.splitlines()]


def test_version() -> None:
    shown = conveyor(None, "--version")
    assert shown.returncode == 0
    assert shown.stdout.strip() == f"conveyor, version {version('conveyor')}"


@pytest.mark.parametrize("args", [["get", "x"], ["cancel", "x"], ["list"], ["tail", "x"]])
def test_the_gateway_commands_say_what_they_need(args: list[str]) -> None:
    refused = conveyor(None, *args)
    assert refused.returncode == 1
    assert "CONVEYOR_URL" in refused.stderr and "CONVEYOR_API_KEY" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_submit_wait_goes_through_the_gateway(stack: Stack) -> None:
    ok = conveyor(stack, "submit", "sleep", "--payload", '{"seconds": 0.6, "steps": 2}', "--wait")
    assert ok.returncode == 0, ok.stderr
    job_id, *events = ok.stdout.splitlines()
    assert len(job_id) == 32
    assert kinds("\n".join(events)) == [
        "job.queued", "job.started", "job.progress", "job.progress", "job.succeeded"
    ]  # fmt: skip
    failed = conveyor(stack, "submit", "permanent", "--wait")
    assert failed.returncode == 1, failed.stderr
    assert kinds(failed.stdout.split("\n", 1)[1])[-1] == "job.failed"


def test_a_delayed_job_through_get_cancel_retry_list_and_tail(stack: Stack) -> None:
    key = f"k-{uuid.uuid4().hex}"
    submitted = conveyor(
        stack, "submit", "noop", "--payload", '{"n": 7}', "--delay", "3600",
        "--idempotency-key", key, "--queue", stack.queue,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    again = conveyor(stack, "submit", "noop", "--idempotency-key", key, "--delay", "3600")
    assert again.stdout.strip() == job_id

    shown = conveyor(stack, "get", job_id)
    assert shown.returncode == 0, shown.stderr
    job = json.loads(shown.stdout)
    assert (job["id"], job["status"], job["payload"]) == (job_id, "scheduled", {"n": 7})

    listed = conveyor(stack, "list", "--status", "scheduled", "--type", "noop", "--limit", "500")
    assert listed.returncode == 0, listed.stderr
    assert f"{job_id} scheduled noop" in " ".join(listed.stdout.split())

    cancelled = conveyor(stack, "cancel", job_id)
    assert (cancelled.returncode, cancelled.stdout.strip()) == (0, f"{job_id} cancelled")
    again = conveyor(stack, "cancel", job_id)  # idempotent
    assert (again.returncode, again.stdout.strip()) == (0, f"{job_id} cancelled")

    cancelled_tail = conveyor(stack, "tail", job_id)
    assert cancelled_tail.returncode == 1
    assert kinds(cancelled_tail.stdout) == ["job.scheduled", "job.cancelled"]

    retried = conveyor(stack, "retry", job_id)
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.split()[0] == job_id
    tailed = conveyor(stack, "tail", job_id)
    assert tailed.returncode == 0, tailed.stderr
    assert kinds(tailed.stdout)[:3] == ["job.scheduled", "job.cancelled", "job.queued"]
    assert kinds(tailed.stdout)[-1] == "job.succeeded"


def test_gateway_refusals_are_one_line(stack: Stack) -> None:
    missing = conveyor(stack, "get", uuid.uuid4().hex)
    assert missing.returncode == 1
    assert missing.stderr.startswith("conveyor: 404 ") and "Traceback" not in missing.stderr
    unknown = conveyor(stack, "submit", "no-such-type")
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("conveyor: 422 ") and "no-such-type" in unknown.stderr
