"""Logging: secrets never reach an access line; text for a terminal, JSON otherwise, and
no terminal escape codes inside JSON."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pty
import re
import subprocess
import sys

import pytest

from conveyor.logs import RedactTokens, redact_access_lines, text_logs
from schemas.settings import Settings


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


def test_the_dashboard_key_is_redacted_from_access_lines() -> None:
    assert access_line("/?key=s3cret") == '127.0.0.1:5000 - "GET /?key=[redacted] HTTP/1.1" 200'
    assert access_line("/?monkey=1") == '127.0.0.1:5000 - "GET /?monkey=1 HTTP/1.1" 200'


# What uvicorn logs at start: the message, and a coloured copy for its own formatter.
UVICORN_START = (
    "import logging, sys\n"
    "from conveyor.logs import configure_logging\n"
    "from schemas.settings import Settings\n"
    "configure_logging(Settings(_env_file=None), 'gateway')\n"
    "logging.getLogger('uvicorn.error').info(\n"
    "    'Started server process [%d]', 42,\n"
    "    extra={'color_message': 'Started server process [\\x1b[36m%d\\x1b[0m]'})\n"
    "logging.getLogger('conveyor.worker').info('\\x1b[31mred\\x1b[0m done',\n"
    "    extra={'job_id': 'ab' * 16, 'attempt': 2})\n"
)


def _logs_of(stderr: int, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-c", UVICORN_START], stderr=stderr, env=env, timeout=30, check=True
    )


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    return {**env, **extra}


def test_logs_are_json_without_escape_codes_when_not_a_terminal() -> None:
    lines = _logs_of(subprocess.PIPE, _env()).stderr.decode().splitlines()
    assert len(lines) == 2
    started, done = map(json.loads, lines)
    assert started["message"] == "Started server process [42]"
    assert "color_message" not in started
    assert (done["message"], done["job_id"], done["attempt"]) == ("red done", "ab" * 16, 2)
    assert "\x1b" not in "".join(lines) and "\\u001b" not in "".join(lines)


def test_logs_are_text_lines_on_a_terminal() -> None:
    controller, terminal = pty.openpty()
    try:
        _logs_of(terminal, _env())
        os.close(terminal)
        terminal = -1
        output = b""
        with contextlib.suppress(OSError):  # EIO once the terminal side is closed
            while chunk := os.read(controller, 4096):
                output += chunk
    finally:
        os.close(controller)
        if terminal != -1:
            os.close(terminal)
    started, done = output.decode().splitlines()
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d INFO  gateway uvicorn.error: Started server process \[42\]", started
    )
    assert done.endswith(f"conveyor.worker: \x1b[31mred\x1b[0m done job_id={'ab' * 16} attempt=2")


@pytest.mark.parametrize(
    ("chosen", "tty", "text"),
    [("auto", True, True), ("auto", False, False), ("json", True, False), ("text", False, True)],
)
def test_the_format_follows_the_setting_then_the_stream(chosen: str, tty: bool, text: bool) -> None:
    class Stream:
        def isatty(self) -> bool:
            return tty

    settings = Settings(_env_file=None, log_format=chosen)  # type: ignore[call-arg]
    assert text_logs(settings, Stream()) is text
