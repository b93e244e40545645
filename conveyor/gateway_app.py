"""The composition root of a gateway process: the app, given what the gateway must not
build itself. The job types it accepts, with their payload models, come from the worker
settings (`CONVEYOR_HANDLERS`, the same lookup and derivation the workers use), so an
unknown type or a payload that does not fit is refused with 422 before anything is queued;
the artifact presigner is one S3 client for the whole process."""

from __future__ import annotations

from fastapi import FastAPI

from consumers.registry import functions
from consumers.storage import Storage
from gateway.app import create_app
from gateway.payloads import JobType
from schemas.settings import Settings


def job_types(settings: Settings) -> list[JobType]:
    """The declared handlers as the gateway knows them. Raises
    `consumers.registry.HandlersNotFound` when they cannot be imported."""
    return [
        JobType(f.name, f.payload.model, f.timeout_s, f.max_tries, f.gate)
        for f in functions(settings).values()
    ]


def gateway_app(settings: Settings) -> FastAPI:
    """A gateway that guessed its job types would accept jobs nothing runs, or refuse real
    ones: without the handlers, it does not start (`HandlersNotFound`)."""
    presigner = Storage.from_settings(settings) if settings.s3_endpoint else None
    return create_app(settings, job_types=job_types(settings), presigner=presigner)


def app_from_env() -> FastAPI:
    """For `uvicorn conveyor.gateway_app:app_from_env --factory`; exports spans as the
    OTEL_* variables say, as `conveyor gateway` does."""
    from conveyor.telemetry import configure

    configure("conveyor-gateway")
    return gateway_app(Settings())
