"""Logging: event tokens never reach an access line."""

from __future__ import annotations

import logging

import pytest

from conveyor.logs import RedactTokens, redact_access_lines


def access_line(path: str) -> str:
    # What uvicorn's httptools and h11 protocols log for each response.
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", path, "1.1", 200),
        None,
    )
    assert RedactTokens().filter(record)
    return record.getMessage()


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/v1/jobs/ab/events?token=YWNtZQ.1.sig", "/v1/jobs/ab/events?token=[redacted]"),
        ("/v1/events?queue=q&token=abc&type=t", "/v1/events?queue=q&token=[redacted]&type=t"),
        ("/v1/jobs?mytoken=keep", "/v1/jobs?mytoken=keep"),
        ("/v1/jobs", "/v1/jobs"),
    ],
)
def test_event_tokens_are_redacted_from_access_lines(path: str, logged: str) -> None:
    assert access_line(path) == f'127.0.0.1:5000 - "GET {logged} HTTP/1.1" 200'


def test_the_filter_is_installed_once_however_often_logging_is_configured() -> None:
    access = logging.getLogger("uvicorn.access")
    redact_access_lines()
    redact_access_lines()
    assert sum(isinstance(f, RedactTokens) for f in access.filters) == 1
