"""The dashboard: `GET /` and its static files, plus the small JSON call the page needs that
the rest of the API does not offer (an artifact's URL as data).

The page is plain HTML, CSS and JavaScript from `gateway/static/`: no build step, nothing
loaded from elsewhere, which the Content-Security-Policy below also enforces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse
from pydantic import BaseModel

from gateway.artifacts import artifact_url as presigned_url
from gateway.deps import GatewayDep, Tenant
from gateway.models import ERRORS

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

# Served by name from this table only, so no request path ever reaches the filesystem.
STATIC_FILES = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
}

# Everything from this origin, nothing from anywhere else; artifacts open in a new tab
# (a navigation, which the policy does not govern).
CSP = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'none'"
)

router = APIRouter()


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(
        STATIC_DIR / "index.html",
        media_type="text/html; charset=utf-8",
        headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"},
    )


@router.get("/static/{name}", include_in_schema=False)
async def static(name: str) -> FileResponse:
    media_type = STATIC_FILES.get(name)
    if media_type is None:
        raise HTTPException(404, f"no static file {name!r}")
    return FileResponse(
        STATIC_DIR / name, media_type=media_type, headers={"Cache-Control": "no-cache"}
    )


class ArtifactUrl(BaseModel):
    url: str


@router.get(
    "/v1/jobs/{job_id}/artifacts/{name}/url",
    response_model=ArtifactUrl,
    tags=["jobs"],
    responses=ERRORS,
)
async def artifact_url(job_id: str, name: str, gw: GatewayDep, tenant: Tenant) -> Any:
    """The artifact's short-lived presigned URL as JSON. A browser's `fetch` cannot read the
    `Location` of the redirect that `GET .../artifacts/{name}` answers (an opaque redirect),
    and following it would carry the API key to the store; the page opens this URL instead."""
    return ArtifactUrl(url=await presigned_url(gw, tenant, job_id, name))
