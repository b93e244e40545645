"""The contract shared by every part of Conveyor. No I/O lives here."""

from schemas.events import EVENT_FOR_STATUS, TERMINAL_EVENTS, EventType
from schemas.keys import CONSUMER_GROUP, DEFAULT_PREFIX, QueueKeys
from schemas.models import Artifact, Event, Job, JobIdentity, SubmitRequest
from schemas.settings import Settings, get_settings
from schemas.status import INITIAL, TERMINAL, TRANSITIONS, JobStatus, can_transition

__all__ = [
    "CONSUMER_GROUP",
    "DEFAULT_PREFIX",
    "EVENT_FOR_STATUS",
    "INITIAL",
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
    "can_transition",
    "get_settings",
]
