"""The commands that go through a gateway with the Python client: `get`, `cancel`, `retry`,
`list`, `tail`, and `submit` when CONVEYOR_URL and CONVEYOR_API_KEY are set. Each prints
to stdout and returns the exit status; a refusal is one line on stderr, not a traceback."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable
from typing import Any

from conveyor.client import Client, ConveyorError, JobStatus, SubmitOptions
from conveyor.display import event_line, timestamp


def run(url: str, api_key: str, command: Callable[[Client], int]) -> int:
    with Client(url, api_key) as client:
        try:
            return command(client)
        except ConveyorError as exc:
            print(f"conveyor: {exc}", file=sys.stderr)
            return 1


def submit(
    client: Client,
    job_type: str,
    payload: dict[str, Any],
    options: SubmitOptions,
    *,
    wait: bool,
) -> int:
    job = client.submit(job_type, payload, **options)
    print(job.id, flush=True)
    return tail(client, job.id) if wait else 0


def tail(client: Client, job_id: str) -> int:
    """Every event of the job until it ends; 0 if it succeeded."""
    last = None
    for last in client.events(job_id):
        print(event_line(last), flush=True)
    return 0 if last is not None and last.status is JobStatus.SUCCEEDED else 1


def get(client: Client, job_id: str) -> int:
    print(client.get(job_id).model_dump_json(indent=2))
    return 0


def cancel(client: Client, job_id: str) -> int:
    job = client.cancel(job_id)
    pending = job.cancel_requested and not job.status.is_terminal
    print(f"{job.id} {'cancel requested' if pending else job.status}")
    return 0


def retry(client: Client, job_id: str, *, from_start: bool) -> int:
    job = client.retry(job_id, from_start=from_start)
    print(f"{job.id} {job.status}")
    return 0


def list_jobs(client: Client, *, status: str | None, job_type: str | None, limit: int) -> int:
    """Your newest `limit` jobs, one line each: id, status, type, created, attempt, stage."""
    jobs = client.list_all(status=status, type=job_type, page_size=min(limit, 100))
    for job in itertools.islice(jobs, limit):
        stage = f" {job.stage} {job.progress:g}%" if job.status is JobStatus.RUNNING else ""
        print(
            f"{job.id} {job.status:<9} {job.type:<16} {timestamp(job.created_at)}"
            f" attempt={job.attempt}{stage}"
        )
    return 0
