"""Progress throttling: a chatty handler cannot flood SSE clients. The hub keeps one for the
whole process, so the same events reach every client of a job.

At most one `job.progress` per job per `interval_s` goes out; a progress event arriving
sooner is held, and a newer one replaces it (that is the only thing ever dropped). A held
event goes out when its interval has passed, or right before the job's next other event, so
a client always sees the latest progress before a terminal event. Every other event passes
through at once.
"""

from __future__ import annotations

from schemas.events import EventType
from schemas.models import Event
from schemas.stream_id import parse_id


class ProgressThrottle:
    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._held: dict[str, Event] = {}
        self._sent_at: dict[str, float] = {}

    def admit(self, event: Event, now: float) -> list[Event]:
        """What to send now, in order, given `event` just arrived."""
        job = event.job_id
        if event.event is EventType.PROGRESS:
            if job not in self._held and now - self._sent_at.get(job, -1e18) >= self.interval_s:
                self._sent_at[job] = now
                return [event]
            self._held[job] = event
            return []
        out = [self._held.pop(job)] if job in self._held else []
        out.append(event)
        if event.event.is_terminal:
            self._sent_at.pop(job, None)
        return out

    def due(self, now: float) -> list[Event]:
        """Held events whose interval has passed, oldest first."""
        ready = [
            job for job in self._held if now - self._sent_at.get(job, -1e18) >= self.interval_s
        ]
        out = sorted((self._held.pop(job) for job in ready), key=lambda e: parse_id(e.id))
        for event in out:
            self._sent_at[event.job_id] = now
        if len(self._sent_at) > 1024:  # forget jobs quiet for a whole interval
            self._sent_at = {
                j: t
                for j, t in self._sent_at.items()
                if now - t < self.interval_s or j in self._held
            }
        return out

    def next_due_in(self, now: float) -> float | None:
        """Seconds until a held event is due; None when nothing is held."""
        if not self._held:
            return None
        return max(
            0.0,
            min(self._sent_at.get(j, -1e18) + self.interval_s for j in self._held) - now,
        )
