"""Logging for every Conveyor process: one JSON object per line (python-json-logger on the
stdlib `logging`, so arq's and uvicorn's records come out the same way) for collectors, or
one plain line per record for a person. CONVEYOR_LOG_FORMAT chooses; its default, `auto`,
is text when the log stream (stderr) is a terminal and JSON otherwise, so `make run` in a
terminal reads as text and the same process under a supervisor or in a container writes JSON.

A job's records carry `job_id`, `type`, `attempt` and `queue` (the worker logs through a
LoggerAdapter bound to the job); its completion record adds `duration_s` and `stages`.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from schemas.settings import Settings

# An SSE link carries its event token in the query string (EventSource cannot send headers),
# and the dashboard link `conveyor run` prints carries the API key (`/?key=`).
SECRET_QUERY = re.compile(r"((?:^|[?&])(?:token|key)=)[^&\s]*")
# uvicorn attaches a copy of some messages coloured for a terminal (`color_message`) to its
# records; neither format prints it, and any escape sequence left in a message is removed
# from JSON, where a collector would show it as garbage.
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
NOT_FIELDS = frozenset([*RESERVED_ATTRS, "color_message"])


class RedactTokens(logging.Filter):
    """Takes event tokens out of uvicorn's access lines: a token in a log is a token anyone
    reading the logs may use until it expires. uvicorn passes the path, query included, as
    the third argument of each access record."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], SECRET_QUERY.sub(r"\1[redacted]", args[2]), *args[3:])
        return True


class ReusingJsonFormatter(JsonFormatter):
    """python-json-logger's formatter without two costs it pays anew for every record: the
    time's text is made once per second (then only the milliseconds change), and one JSON
    encoder serves every record instead of `json.dumps` building one each time. Same
    output, byte for byte, a few µs sooner; a consumer writes one record per job."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(
            *args, json_serializer=self._serialize, reserved_attrs=list(NOT_FIELDS), **kwargs
        )
        # What `json.dumps(data, default=..., cls=..., indent=..., ensure_ascii=...)` builds.
        self._encoder = (self.json_encoder or json.JSONEncoder)(
            default=self.json_default, indent=self.json_indent, ensure_ascii=self.json_ensure_ascii
        )
        self._second: tuple[int, str] = (-1, "")

    def _serialize(self, data: Any, **_options: Any) -> str:
        return str(self._encoder.encode(data))

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        for name, value in log_data.items():
            if isinstance(value, str) and "\x1b" in value:
                log_data[name] = ANSI_ESCAPE.sub("", value)
        return log_data

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None or self.default_msec_format is None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if self._second[0] != second:
            self._second = (second, time.strftime(self.default_time_format, self.converter(second)))
        return self.default_msec_format % (self._second[1], record.msecs)


class TextFormatter(logging.Formatter):
    """`12:00:01 INFO  worker conveyor.worker: message key=value ...`: a record's own fields
    (a job's `job_id`, `type`, `attempt`, ...) follow its message, as JSON would carry them."""

    def __init__(self, process: str) -> None:
        process = process.replace("%", "%%")
        super().__init__(f"%(asctime)s %(levelname)-5s {process} %(name)s: %(message)s", "%H:%M:%S")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = [
            f"{name}={value}"
            for name, value in record.__dict__.items()
            if name not in NOT_FIELDS and not name.startswith("_")
        ]
        return f"{line} {' '.join(fields)}" if fields else line


def text_logs(settings: Settings, stream: Any) -> bool:
    """Whether to log text to `stream`: asked for, or `auto` and a person is watching."""
    if settings.log_format != "auto":
        return settings.log_format == "text"
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def configure_logging(settings: Settings, process: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if text_logs(settings, sys.stderr):
        handler.setFormatter(TextFormatter(process))
    else:
        handler.setFormatter(
            ReusingJsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                static_fields={"process": process},
            )
        )
    skip_unused_record_attributes()
    redact_access_lines()
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())


def redact_access_lines() -> None:
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactTokens) for f in access.filters):
        access.addFilter(RedactTokens())


def skip_unused_record_attributes() -> None:
    """Neither format prints a record's source location, thread or process (the JSON one
    leaves them out as reserved attributes; `process` there is a static field), so don't
    collect them: finding the caller walks the stack and the pid is a system call, for every
    record, and a consumer writes one record per job. These switches are the ones the
    logging HOWTO's "Optimization" section names for this."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
