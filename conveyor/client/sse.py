"""A job's event stream across connections: parsing `text/event-stream`, and resuming.

Parsed here rather than with a library: the format is a few lines of the HTML standard
("Interpreting an event stream"), httpx already splits lines, and resuming needs the ids in
our own hands anyway. `retry:` is read past: reconnecting is paced by `Retries`, which
starts sooner than the gateway's 5 s (meant for browsers) and backs off.
"""

from __future__ import annotations

from dataclasses import dataclass

from conveyor.client.models import SNAPSHOT, Event, Job
from conveyor.client.retries import Retries
from schemas.errors import ConveyorError
from schemas.stream_id import is_stream_id, parse_id


@dataclass(frozen=True)
class Message:
    event: str
    data: str
    id: str | None


class Decoder:
    """Lines of one response in, messages out: a blank line ends a message, `:` starts a
    comment (the gateway's pings), `data:` lines join with newlines. An `id:` belongs to its
    own message only (the standard carries it over to later ones; every job event the
    gateway sends has its own)."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, line: str) -> Message | None:
        if not line:
            message = None
            if self._data:
                message = Message(self._event or "message", "\n".join(self._data), self._id)
            self._event, self._data, self._id = "", [], None
            return message
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value or None
        return None


class Resume:
    """Where a job's stream stands: the last id delivered (sent as `Last-Event-ID` on the next
    connection), whether the job has ended, and the interruptions since the last event.

    The gateway replays exactly what follows `Last-Event-ID`; dropping anything not above it
    as well keeps a replay that overlaps (a misbehaving proxy's, say) from repeating."""

    def __init__(self, last_id: str | None, retries: Retries) -> None:
        self.last_id = last_id
        self.done = False
        self.retries = retries
        self._failures = 0

    def accept(self, message: Message) -> Event | None:
        """The event to deliver for `message`, or None for one already delivered."""
        try:
            if message.event == SNAPSHOT:
                event = Event.from_snapshot(Job.model_validate_json(message.data))
            else:
                event = Event.model_validate_json(message.data)
        except ValueError as exc:
            raise ConveyorError(f"unreadable {message.event!r} event from the gateway") from exc
        if message.id is not None and is_stream_id(message.id):
            event = event.model_copy(update={"id": message.id})
        if self.last_id is not None and parse_id(event.id) <= parse_id(self.last_id):
            return None
        self.last_id = event.id
        self.done = event.is_terminal
        self._failures = 0
        return event

    def interrupted(self, retry_after: float | None = None) -> float | None:
        """The connection ended before the job did: seconds to wait before the next one, or
        None to give up (too many in a row without an event between them)."""
        self._failures += 1
        return self.retries.delay(self._failures, retry_after)
