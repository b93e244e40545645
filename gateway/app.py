"""`create_app(settings, job_types=..., presigner=...)`: the gateway's FastAPI app. Its
lifespan opens Redis (with socket timeouts, so nothing waits on a frozen server forever), the
job store and the SSE hub. The job types it accepts (with their payload models, or by name
alone) and the artifact presigner come from the composition root (`conveyor.gateway_app`):
the gateway never imports the consumers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from redis.asyncio import Redis
from starlette.types import ASGIApp

from gateway import errors
from gateway.auth import ApiKeys, EventTokens
from gateway.deps import Gateway
from gateway.direct import DirectRoutes
from gateway.limits import BodyLimit
from gateway.metrics import Metrics
from gateway.payloads import JobType, JobTypes
from gateway.routes import dashboard, events, health, jobs, queues, schedules
from gateway.routes import job_types as job_types_routes
from gateway.sse.hub import BLOCK_MS, Hub
from gateway.types import Presigner
from producer import Producer
from producer.checks import warn_if_evicting
from producer.connection import redis_from_url
from schemas.settings import Settings

log = logging.getLogger("conveyor.gateway")


def _redis(settings: Settings, read_timeout_s: float) -> Redis:
    if not settings.redis_url:
        raise RuntimeError("CONVEYOR_REDIS_URL is not set")
    # Any CONVEYOR_REDIS_URL form (Sentinel, Cluster too); see producer.connection.
    return redis_from_url(
        settings.redis_url,
        socket_timeout=read_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        health_check_interval=30,
    )


class _GatewayApp(FastAPI):
    """FastAPI with `DirectRoutes` (gateway/direct.py) in front of its whole middleware stack,
    FastAPI's own layers included (its error, telemetry and body-limit middleware, which
    `add_middleware` puts outside any user middleware): a well-formed submit is served
    before the chain, which it passed through four layers deep (bench.http_submit)."""

    def __init__(self, *, direct_limits: tuple[int, int], **options: Any) -> None:
        self._direct_limits = direct_limits
        super().__init__(**options)

    def build_middleware_stack(self) -> ASGIApp:
        return DirectRoutes(super().build_middleware_stack(), *self._direct_limits)


def create_app(
    settings: Settings,
    *,
    job_types: Iterable[str | JobType],
    presigner: Presigner | None = None,
) -> FastAPI:
    metrics = Metrics()
    accepted = JobTypes(job_types)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = _redis(settings, settings.redis_timeout_s)
        await warn_if_evicting(redis)
        # The hub's XREAD blocks up to BLOCK_MS: its socket must wait longer than that.
        hub_redis = _redis(settings, settings.redis_timeout_s + BLOCK_MS / 1000)
        hub = Hub(Producer(hub_redis, settings), settings, metrics)
        app.state.gateway = Gateway(
            settings=settings,
            producer=Producer(redis, settings),
            hub=hub,
            api_keys=ApiKeys(settings.api_keys),
            tokens=EventTokens.from_settings(settings),
            metrics=metrics,
            job_types=accepted,
            presigner=presigner,
        )
        if not settings.api_keys:
            log.warning("CONVEYOR_API_KEYS is empty: every request to /v1 will be refused (401)")
        if not settings.token_secret:
            log.info("CONVEYOR_TOKEN_SECRET unset: event tokens are valid on this process only")
        hub.start()
        try:
            yield
        finally:
            await hub.close()
            await redis.aclose()
            await hub_redis.aclose()

    app = _GatewayApp(
        direct_limits=(settings.max_payload_bytes, settings.max_bulk_bytes),
        title="Conveyor",
        summary="Submit jobs, watch them live over Server-Sent Events.",
        version="0.1.0",
        lifespan=lifespan,
    )
    errors.install(app)
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.max_payload_bytes,
        per_path={"/v1/jobs/bulk": settings.max_bulk_bytes},
    )
    app.include_router(jobs.router)
    app.include_router(events.router)
    app.include_router(health.router)
    app.include_router(job_types_routes.router)
    app.include_router(schedules.router)
    app.include_router(queues.router)
    app.include_router(dashboard.router)
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's document, with each job type's payload (`JobTypes.document`)."""
        if app.openapi_schema is None:
            accepted.document(generate(), "/v1/jobs")
        return generate()  # the document FastAPI built once, as documented

    app.openapi = openapi  # type: ignore[method-assign]
    return app
