"""The job type names the gateway accepts (it refuses the others with 422 before queueing)."""

from __future__ import annotations

import logging

from schemas.settings import Settings

log = logging.getLogger("conveyor.gateway")

BUILTIN = frozenset({"noop", "sleep", "ingest_url"})


def known_job_types(settings: Settings) -> frozenset[str]:
    try:
        from consumers.registry import job_types
    except ImportError:
        return BUILTIN
    try:
        return frozenset(job_types(settings))
    except ImportError as exc:
        log.warning(
            "cannot load handlers %s (%s); accepting the built-in types", settings.handlers, exc
        )
        return BUILTIN
