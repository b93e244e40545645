"""The contract shared by every part of Conveyor. No I/O lives here."""

from schemas.events import TERMINAL_EVENTS, EventType
from schemas.keys import CONSUMER_GROUP, DEFAULT_PREFIX, QueueKeys
from schemas.models import Artifact, Event, Job, JobIdentity, SubmitRequest
from schemas.settings import Settings, get_settings
from schemas.status import TERMINAL, TRANSITIONS, JobStatus

__all__ = [
    "CONSUMER_GROUP",
    "DEFAULT_PREFIX",
    "TERMINAL",
    "TERMINAL_EVENTS",
    "TRANSITIONS",
    "Artifact",
    "Event",
    "EventType",
    "Job",
    "JobIdentity",
    "JobStatus",
    "QueueKeys",
    "Settings",
    "SubmitRequest",
    "get_settings",
]
