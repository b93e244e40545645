"""Schedules: a job submitted on every tick of a cron expression (`POST /v1/schedules`) or
of an arq `cron(...)` declared in the worker settings. What a schedule is and when it ticks;
no I/O (the store keeps them, consumers/scheduling.py submits their jobs).

Five-field cron expressions are parsed by `cronsim` (the parser healthchecks.io runs on),
in the schedule's IANA time zone, so "0 9 * * *" in Europe/Paris stays 9:00 across DST.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.models import JOB_TYPE_NAME, QUEUE_NAME
from schemas.strict_json import check_json

SCHEDULE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


class ScheduleRequest(BaseModel):
    """The body of `POST /v1/schedules`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=SCHEDULE_NAME.pattern, description="unique per tenant")
    cron: str = Field(max_length=200, description='five fields: "*/15 * * * *"')
    type: str = Field(pattern=JOB_TYPE_NAME.pattern)
    payload: dict[str, Any] = Field(default_factory=dict)
    queue: str = Field(default="default", pattern=QUEUE_NAME.pattern)
    timezone: str = Field(default="UTC", max_length=64, description="an IANA time zone")

    @field_validator("payload")
    @classmethod
    def _strict_json(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_json(value, "payload")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone (e.g. Europe/Paris)") from None
        return value

    @model_validator(mode="after")
    def _parsable_cron(self) -> ScheduleRequest:
        if len(self.cron.split()) != 5:
            raise ValueError("cron: five fields (minute hour day month weekday)")
        try:
            CronSim(self.cron, datetime.now(ZoneInfo(self.timezone)))
        except CronSimError as exc:
            raise ValueError(f"cron: {exc}") from None
        return self


class Schedule(ScheduleRequest):
    """A schedule as stored, and as `GET /v1/schedules` shows it."""

    model_config = ConfigDict(extra="ignore")

    tenant: str = ""
    origin: Literal["api", "worker"] = "api"
    created_at: int = 0  # ms
    last_run_at: int | None = None  # the last tick a job was submitted for (ms)
    next_run_at: int | None = None  # ms

    @property
    def key(self) -> str:
        return schedule_key(self.tenant, self.name)

    @model_validator(mode="after")
    def _parsable_cron(self) -> Schedule:
        return self  # checked when it was created; an `arq` timing is not five fields

    def ticks_after(self, after_ms: int, now_ms: int) -> tuple[int | None, int]:
        """(the latest tick in (after, now], or None; the first tick after now), in ms.
        The latest only: missed ticks give at most one catch-up run."""
        zone = ZoneInfo(self.timezone)
        now = datetime.fromtimestamp(now_ms / 1000, zone)
        latest = next(CronSim(self.cron, now, reverse=True), None)  # at or before now
        latest_ms = _ms(latest) if latest is not None else None
        upcoming = _ms(next(CronSim(self.cron, now)))
        if latest_ms is None or latest_ms <= after_ms:
            return None, upcoming
        return latest_ms, upcoming


def schedule_key(tenant: str, name: str) -> str:
    """`tenant` holds no `/` (TENANT_NAME), so the first `/` ends it."""
    return f"{tenant}/{name}"


def _ms(moment: datetime) -> int:
    return int(moment.astimezone(UTC).timestamp() * 1000)
