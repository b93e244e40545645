"""`FreshJob`: a job as its submit script has just created it, known without reading it back.

The submit scripts answer with what only Redis knows (the time, the event's id); everything
else is the request, already validated. So a new job's snapshot is built here rather than
read: as a `Job` for `POST /v1/jobs`, or straight as its JSON for `POST /v1/jobs/bulk`, where
building and dumping a thousand `Job` models was the larger part of the gateway's time
(bench.bullmq's enqueue phase). Both say the same thing; a test holds `dump()` equal to
`job().model_dump(mode="json")`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from schemas.models import CallbackState, Job, SubmitRequest
from schemas.status import JobStatus


@dataclass(frozen=True, slots=True)
class FreshJob:
    request: SubmitRequest
    tenant: str
    job_id: str
    created_at: int
    last_event_id: str

    @property
    def _due_at(self) -> int | None:
        delay_ms = int(self.request.delay_s * 1000)
        return self.created_at + delay_ms if delay_ms > 0 else None

    def job(self) -> Job:
        request, due_at = self.request, self._due_at
        # Every value is already of its field's type: no second validation. The fields with
        # a default factory are given too: model_construct inspects a factory's signature
        # each time it calls one, which cost more than validating.
        return Job.model_construct(
            artifacts=[],
            steps=[],
            id=self.job_id,
            queue=request.queue,
            type=request.type,
            status=JobStatus.QUEUED if due_at is None else JobStatus.SCHEDULED,
            tenant=self.tenant,
            priority=request.priority,
            max_attempts=request.max_attempts,
            timeout_s=request.timeout_s,
            payload=request.payload,
            created_at=self.created_at,
            updated_at=self.created_at,
            due_at=due_at,
            last_event_id=self.last_event_id,
            callback=CallbackState(url=request.callback_url, status="waiting")
            if request.callback_url
            else None,
        )

    def dump(self) -> dict[str, Any]:
        """`job().model_dump(mode="json")`, without the model."""
        request, due_at = self.request, self._due_at
        callback = request.callback_url
        return {
            "id": self.job_id,
            "queue": request.queue,
            "type": request.type,
            "status": JobStatus.QUEUED.value if due_at is None else JobStatus.SCHEDULED.value,
            "tenant": self.tenant,
            "stage": None,
            "progress": 0.0,
            "message": None,
            "attempt": 0,
            "priority": request.priority,
            "max_attempts": request.max_attempts,
            "timeout_s": request.timeout_s,
            "owner": None,
            "payload": request.payload,
            "result": None,
            "error": None,
            "artifacts": [],
            "cancel_requested": False,
            "created_at": self.created_at,
            "updated_at": self.created_at,
            "started_at": None,
            "finished_at": None,
            "due_at": due_at,
            "last_event_id": self.last_event_id,
            "steps": [],
            "parent_id": None,
            "children": None,
            "on_child_failure": None,
            "callback": {"url": callback, "status": "waiting", "attempts": 0, "last_error": None}
            if callback
            else None,
        }
