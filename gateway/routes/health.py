"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import hmac
import time
from typing import Any

import httpx
from fastapi import APIRouter, HTTPException
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from gateway.deps import Credentials, Gateway, GatewayDep
from gateway.errors import RedisUnavailable, redis_deadline
from gateway.models import ErrorBody

# Consumers mark themselves seen every 5 s (consumers/worker.py, HEARTBEAT_S): three missed
# beats and a consumer no longer counts as alive.
ALIVE_WINDOW_S = 15.0

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive (it does not look at Redis)."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "a dependency is unreachable"}})
async def readyz(gw: GatewayDep) -> Any:
    """Redis answers (and S3, when configured): route traffic here."""
    checks: dict[str, str] = {}
    try:
        async with redis_deadline(gw.settings.redis_timeout_s):
            await gw.producer.ping()
            checks["redis"] = await gw.producer.store_full() or "ok"
    except (RedisUnavailable, RedisError) as exc:
        checks["redis"] = f"unreachable: {exc}"
    if gw.settings.s3_endpoint:
        checks["s3"] = await _s3_check(gw)
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503
    )


async def _s3_check(gw: Gateway) -> str:
    endpoint = gw.settings.s3_endpoint or ""
    if "://" not in endpoint:
        endpoint = f"{'https' if gw.settings.s3_secure else 'http'}://{endpoint}"
    try:
        async with httpx.AsyncClient(timeout=gw.settings.redis_timeout_s) as client:
            # Any HTTP answer (403 included) means the server is there and serving.
            await client.head(endpoint)
    except httpx.HTTPError as exc:
        return f"unreachable: {type(exc).__name__}"
    return "ok"


@router.get("/metrics", response_class=Response, responses={401: {"model": ErrorBody}})
async def metrics(gw: GatewayDep, credentials: Credentials) -> Response:
    """Prometheus text: gateway counters, and queue depth/pending/lag for autoscalers.
    Open unless CONVEYOR_METRICS_KEY is set; then that key is required as a Bearer token."""
    required = gw.settings.metrics_key
    given = credentials.credentials if credentials else ""
    if required and not hmac.compare_digest(given.encode(), required.encode()):
        raise HTTPException(401, "/metrics needs the metrics key", {"WWW-Authenticate": "Bearer"})
    m = gw.metrics
    try:
        async with redis_deadline(gw.settings.redis_timeout_s):
            await _queue_gauges(gw)
        m.redis_up.set(1)
    except (RedisUnavailable, RedisError):
        m.redis_up.set(0)
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)


async def _queue_gauges(gw: Gateway) -> None:
    m = gw.metrics
    alive_since_ms = (time.time() - ALIVE_WINDOW_S) * 1000
    for queue in gw.settings.queues:
        stats = await gw.producer.stats(queue)
        m.queue_length.labels(queue).set(stats.length)
        m.queue_delayed.labels(queue).set(stats.delayed)
        m.queue_dead.labels(queue).set(stats.dead)
        m.queue_pending.labels(queue).set(stats.pending)
        m.queue_lag.labels(queue).set(stats.lag)
        alive = sum(ms >= alive_since_ms for ms in stats.seen_ms.values())
        m.consumers_alive.labels(queue).set(alive)
