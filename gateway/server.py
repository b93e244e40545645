"""`serve(settings)`: one gateway process under uvicorn (`conveyor gateway`)."""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI

from gateway.app import create_app
from schemas.settings import Settings

# SSE responses stay open; on SIGTERM sse-starlette ends them, and this bounds the rest.
GRACEFUL_SHUTDOWN_S = 5


def serve(settings: Settings) -> None:
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        proxy_headers=True,
        # Logging is configured by the caller (`conveyor gateway`: JSON lines, see
        # conveyor/logs.py); uvicorn's records propagate to it instead of its own handlers.
        log_config=None,
    )


def app_from_env() -> FastAPI:
    """For `uvicorn gateway.server:app_from_env --factory`."""
    return create_app(Settings())
