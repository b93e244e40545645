"""The client's exception tree and what it exports."""

from __future__ import annotations

import builtins
import email.utils
import time
from types import ModuleType

import httpx
import pytest

import conveyor.client
from conveyor.client import (
    ApiError,
    AuthError,
    Conflict,
    ConveyorError,
    Job,
    JobCancelled,
    JobFailed,
    NotFound,
    RateLimited,
    TimeoutError,
    Unavailable,
    ValidationError,
)
from conveyor.client.errors import ended, error_for


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (401, AuthError),
        (403, AuthError),
        (404, NotFound),
        (409, Conflict),
        (413, ApiError),
        (422, ValidationError),
        (429, RateLimited),
        (500, ApiError),
        (503, Unavailable),
    ],
)
def test_each_status_has_its_exception_with_the_gateways_words(
    status: int, kind: type[ApiError]
) -> None:
    body = {"error": "some_code", "message": "what went wrong", "status": "running"}
    error = error_for(httpx.Response(status, json=body))
    assert type(error) is kind
    assert isinstance(error, ConveyorError)
    assert (error.status_code, error.error, error.message) == (status, "some_code", body["message"])
    assert str(error) == f"{status} what went wrong"


def test_details_of_a_conflict_and_a_validation_error() -> None:
    conflict = error_for(
        httpx.Response(409, json={"error": "conflict", "message": "m", "status": "succeeded"})
    )
    assert isinstance(conflict, Conflict) and conflict.status == "succeeded"
    detail = [{"loc": ["body", "bogus"], "msg": "Extra inputs are not permitted", "type": "x"}]
    invalid = error_for(
        httpx.Response(422, json={"error": "validation_error", "message": "m", "detail": detail})
    )
    assert isinstance(invalid, ValidationError) and invalid.detail == detail


def test_a_body_that_is_not_the_gateways_is_kept_short() -> None:
    error = error_for(httpx.Response(502, text="<html>" + "x" * 500))
    assert error.message.startswith("<html>") and len(error.message) == 200
    assert error_for(httpx.Response(504)).message == "HTTP 504"


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert error_for(httpx.Response(503, headers={"Retry-After": "7"})).retry_after == 7
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    later = error_for(httpx.Response(429, headers={"Retry-After": date})).retry_after
    assert later is not None and 25 < later <= 30
    assert error_for(httpx.Response(503, headers={"Retry-After": "soon"})).retry_after is None


def test_how_a_job_ended_is_its_outcome_or_an_exception_carrying_it() -> None:
    def job(status: str) -> Job:
        return Job(id="j", queue="q", type="t", status=status, error="why")

    assert ended(job("succeeded")).status == "succeeded"
    with pytest.raises(JobFailed) as failed:
        ended(job("failed"))
    assert failed.value.job.error == "why"
    with pytest.raises(JobCancelled):
        ended(job("cancelled"))


def test_the_client_timeout_is_also_the_builtin_one() -> None:
    assert issubclass(TimeoutError, ConveyorError)
    assert issubclass(TimeoutError, builtins.TimeoutError)


def test_the_exported_names_are_the_public_api() -> None:
    names = vars(conveyor.client).items()
    public = {n for n, v in names if not n.startswith("_") and not isinstance(v, ModuleType)}
    assert public == set(conveyor.client.__all__)
