"""producer/fresh.py: a new job's snapshot, built two ways (a `Job`, or straight as its JSON
for a bulk answer), must say the same thing to the byte, for every kind of plain submit."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic_core import to_json

from producer.fresh import FreshJob
from schemas.models import Job, SubmitRequest

REQUESTS: list[dict[str, Any]] = [
    {"type": "noop"},
    {"type": "resize", "payload": {"url": "https://x/y.png", "sizes": [1, 2.5]}, "queue": "media"},
    {"type": "noop", "delay_s": 1.5},
    {"type": "noop", "max_attempts": 3, "timeout_s": 2.5, "priority": 9},
    {"type": "noop", "callback_url": "https://example.com/hook"},
    {"type": "noop", "cache_ttl_s": 60, "cache_key": "k"},
]


@pytest.mark.parametrize("body", REQUESTS)
def test_the_dump_is_the_jobs_own_json(body: dict[str, Any]) -> None:
    fresh = FreshJob(SubmitRequest.model_validate(body), "acme", "0" * 32, 1_700_000_000_123, "1-0")
    job = fresh.job()
    assert to_json(fresh.dump()) == to_json(job.model_dump(mode="json"))
    # and the model is what a read of the hash gives back as valid
    assert Job.model_validate(job.model_dump()) == job


def test_a_delayed_job_is_scheduled_for_its_due_time() -> None:
    fresh = FreshJob(SubmitRequest(type="noop", delay_s=2), "", "a" * 32, 1000, "1-0")
    assert fresh.dump()["status"] == "scheduled"
    assert fresh.dump()["due_at"] == 3000
