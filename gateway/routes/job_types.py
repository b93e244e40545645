"""`/v1/job-types`: what `POST /v1/jobs` accepts, each type with its payload's JSON Schema."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gateway.deps import GatewayDep, Tenant
from gateway.models import ERRORS, JobTypeInfo

router = APIRouter(prefix="/v1/job-types", tags=["jobs"])


@router.get(
    "", response_model=list[JobTypeInfo], responses={k: v for k, v in ERRORS.items() if k != 404}
)
async def list_(gw: GatewayDep, tenant: Tenant) -> Any:
    """The job types this gateway accepts, by name. A type's timeout and attempts are its
    handler's, else the defaults (`CONVEYOR_JOB_TIMEOUT_S`, `CONVEYOR_MAX_ATTEMPTS`)."""
    settings = gw.settings
    return [
        JobTypeInfo(
            name=t.name,
            payload_schema=gw.job_types.schema(t.name),
            timeout_s=t.timeout_s or settings.job_timeout_s,
            max_tries=t.max_tries or settings.max_attempts,
            flow_control=t.gate.describe() if t.gate else {},
        )
        for t in gw.job_types
    ]
