"""An artifact's short-lived presigned URL, for the redirect and for the dashboard's JSON.

The gateway signs URLs but never opens S3 itself: the composition root
(`conveyor.gateway_app`) hands it a `gateway.types.Presigner`, one S3 client for the
process, or none where no store is configured.
"""

from __future__ import annotations

import asyncio

from fastapi import HTTPException

from gateway.access import own_job
from gateway.deps import Gateway


async def artifact_url(gw: Gateway, tenant: str, job_id: str, name: str) -> str:
    job = await own_job(gw, tenant, job_id)
    found = next((a for a in job.artifacts if a.name == name), None)
    if found is None:
        raise HTTPException(404, f"job {job_id!r} has no artifact {name!r}")
    if gw.presigner is None:
        raise HTTPException(503, "artifact storage is not configured")
    presigner, ttl_s = gw.presigner, gw.settings.presign_ttl_s
    try:
        # Signing is local, but minio may ask the store for the bucket's region first.
        async with asyncio.timeout(gw.settings.redis_timeout_s):
            return await asyncio.to_thread(presigner.presigned_get_url, found.key, ttl_s)
    except TimeoutError:
        raise HTTPException(503, "artifact storage did not answer in time") from None
