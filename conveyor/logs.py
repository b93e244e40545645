"""Logging for every Conveyor process: one JSON object per line (python-json-logger on the
stdlib `logging`, so arq's and uvicorn's records come out the same way), or plain text for
a terminal with CONVEYOR_LOG_FORMAT=text.

A job's records carry `job_id`, `type`, `attempt` and `queue` (the worker logs through a
LoggerAdapter bound to the job); its completion record adds `duration_s` and `stages`.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

from schemas.settings import Settings

TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def configure_logging(settings: Settings, process: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "text":
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    else:
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                static_fields={"process": process},
            )
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
