from __future__ import annotations

from gateway.sse.throttle import ProgressThrottle
from schemas.events import EventType
from schemas.models import Event
from schemas.status import JobStatus

_seq = iter(range(1, 10_000))


def event(kind: EventType, job: str = "j1") -> Event:
    status = JobStatus.SUCCEEDED if kind is EventType.SUCCEEDED else JobStatus.RUNNING
    return Event(
        id=f"100-{next(_seq)}", event=kind, job_id=job, queue="q", job_type="t", status=status,
        ts=0,
    )  # fmt: skip


def test_progress_is_coalesced_per_job_to_one_per_interval() -> None:
    throttle = ProgressThrottle(1.0)
    p1, p2, p3 = (event(EventType.PROGRESS) for _ in range(3))
    other = event(EventType.PROGRESS, job="j2")
    assert throttle.admit(p1, now=0.0) == [p1]
    assert throttle.admit(p2, now=0.1) == []
    assert throttle.admit(p3, now=0.2) == []  # replaces p2: the only thing ever dropped
    assert throttle.admit(other, now=0.3) == [other]  # other jobs have their own budget
    assert throttle.next_due_in(now=0.5) == 0.5
    assert throttle.due(now=0.9) == []
    assert throttle.due(now=1.0) == [p3]
    assert throttle.next_due_in(now=1.0) is None


def test_other_events_pass_at_once_after_the_latest_held_progress() -> None:
    throttle = ProgressThrottle(1.0)
    p1, p2 = event(EventType.PROGRESS), event(EventType.PROGRESS)
    done = event(EventType.SUCCEEDED)
    assert throttle.admit(p1, now=0.0) == [p1]
    assert throttle.admit(p2, now=0.1) == []
    assert throttle.admit(done, now=0.2) == [p2, done]
    assert throttle.due(now=5.0) == []
    started = event(EventType.STARTED)
    assert throttle.admit(started, now=5.0) == [started]
