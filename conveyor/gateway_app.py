"""The composition root of a gateway process: the app, given what the gateway must not
build itself. The job types it accepts come from the worker settings (`CONVEYOR_HANDLERS`,
the same lookup the workers use), so an unknown type is refused with 422 before anything is
queued; the artifact presigner is one S3 client for the whole process."""

from __future__ import annotations

from fastapi import FastAPI

from consumers.registry import job_types
from consumers.storage import Storage
from gateway.app import create_app
from schemas.settings import Settings


def gateway_app(settings: Settings) -> FastAPI:
    """Raises `consumers.registry.HandlersNotFound` when the handlers cannot be imported:
    a gateway that guessed its job types would accept jobs nothing runs, or refuse real ones."""
    presigner = Storage.from_settings(settings) if settings.s3_endpoint else None
    return create_app(settings, job_types=job_types(settings), presigner=presigner)


def app_from_env() -> FastAPI:
    """For `uvicorn conveyor.gateway_app:app_from_env --factory`."""
    return gateway_app(Settings())
