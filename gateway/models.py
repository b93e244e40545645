"""Response bodies of the API (requests are `schemas.SubmitRequest`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schemas.models import Job


class Links(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    self_: str = Field(alias="self", description="the job's snapshot")
    events: str = Field(description="SSE stream of the job; carries a token for EventSource")


class JobResource(Job):
    """A job's snapshot with its links."""

    links: Links


class PageLinks(BaseModel):
    events: str = Field(description="SSE firehose of the caller's jobs, with a token")


class JobPage(BaseModel):
    items: list[JobResource]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null: done")
    links: PageLinks


class ActionResult(BaseModel):
    outcome: str = Field(description="cancel: `cancelled` or `requested`; retry: `queued`")
    job: JobResource


class ErrorBody(BaseModel):
    error: str
    message: str


# The error answers most routes share, for the OpenAPI description (errors.py makes them).
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or unknown API key"},
    404: {"model": ErrorBody, "description": "no such job (or another tenant's)"},
    503: {"model": ErrorBody, "description": "Redis did not answer in time, or is full"},
}
