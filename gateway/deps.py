"""FastAPI dependencies, as `Annotated` aliases: `tenant: Tenant`, `gw: GatewayDep`."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.auth import FIREHOSE_SCOPE, ApiKeys, EventTokens, job_scope
from gateway.metrics import Metrics
from gateway.payloads import JobTypes
from gateway.sse.hub import Hub
from gateway.types import Presigner
from producer import Producer
from schemas.settings import Settings


@dataclass
class Gateway:
    """Everything a request handler may use, built once by the app's lifespan. The job
    store is its only way to Redis."""

    settings: Settings
    producer: Producer
    hub: Hub
    api_keys: ApiKeys
    tokens: EventTokens
    metrics: Metrics
    job_types: JobTypes
    presigner: Presigner | None


def get_gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]

bearer = HTTPBearer(auto_error=False, description="an API key from CONVEYOR_API_KEYS")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
TokenParam = Annotated[
    str | None, Query(description="event token from a `links.events` URL (for EventSource)")
]

UNAUTHORIZED = HTTPException(
    401, "missing or unknown API key", headers={"WWW-Authenticate": "Bearer"}
)
# A link's token is checked only when no key is given: a browser's EventSource, a `curl -N`
# of the `events` link. Saying which of the two failed tells its user to fetch a new link
# (tokens expire after CONVEYOR_EVENT_TOKEN_TTL_S) rather than to look for a key.
BAD_TOKEN = HTTPException(
    401,
    "invalid or expired events token: take a fresh `events` link from the job",
    headers={"WWW-Authenticate": "Bearer"},
)


def _from_key(gw: Gateway, credentials: HTTPAuthorizationCredentials | None) -> str | None:
    if credentials is None:
        return None
    tenant = gw.api_keys.tenant(credentials.credentials)
    if tenant is None:
        raise UNAUTHORIZED
    return tenant


def require_tenant(gw: GatewayDep, credentials: Credentials) -> str:
    tenant = _from_key(gw, credentials)
    if tenant is None:
        raise UNAUTHORIZED
    return tenant


def job_events_tenant(
    gw: GatewayDep, credentials: Credentials, job_id: str, token: TokenParam = None
) -> str:
    """A bearer key, or a token signed for this one job."""
    return _from_key(gw, credentials) or _from_token(gw, job_scope(job_id), token)


def firehose_tenant(gw: GatewayDep, credentials: Credentials, token: TokenParam = None) -> str:
    """A bearer key, or a firehose token (the `links.events` of `GET /v1/jobs`)."""
    return _from_key(gw, credentials) or _from_token(gw, FIREHOSE_SCOPE, token)


def _from_token(gw: Gateway, scope: str, token: str | None) -> str:
    if not token:
        raise UNAUTHORIZED
    tenant = gw.tokens.verify(scope, token)
    if tenant is None:
        raise BAD_TOKEN
    return tenant


Tenant = Annotated[str, Depends(require_tenant)]
JobEventsTenant = Annotated[str, Depends(job_events_tenant)]
FirehoseTenant = Annotated[str, Depends(firehose_tenant)]


def require_admin(gw: GatewayDep, credentials: Credentials) -> None:
    """An admin key (`CONVEYOR_ADMIN_KEYS`): queue-wide actions touch every tenant's jobs."""
    if credentials is None:
        raise UNAUTHORIZED
    given = credentials.credentials.encode()
    if any(hmac.compare_digest(given, key.encode()) for key in gw.settings.admin_keys):
        return
    if gw.api_keys.tenant(credentials.credentials) is not None:
        raise HTTPException(403, "queue-wide actions need an admin key (CONVEYOR_ADMIN_KEYS)")
    raise UNAUTHORIZED


Admin = Depends(require_admin)
