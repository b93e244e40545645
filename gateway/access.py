"""Reading a caller's own jobs: another tenant's job is answered exactly like a missing one."""

from __future__ import annotations

from urllib.parse import quote

from gateway.auth import FIREHOSE_SCOPE, job_scope
from gateway.deps import Gateway
from gateway.errors import redis_deadline
from gateway.models import ArtifactResource, JobResource, Links, PageLinks
from schemas.errors import JobNotFound
from schemas.models import JOB_ID, Job


async def own_job(gw: Gateway, tenant: str, job_id: str) -> Job:
    if not JOB_ID.fullmatch(job_id):
        raise JobNotFound(job_id[:64])
    async with redis_deadline(gw.settings.redis_timeout_s):
        job = await gw.producer.find(job_id)
    if job is None or job.tenant != tenant:
        raise JobNotFound(job_id)
    return job


def job_path(job_id: str) -> str:
    return f"/v1/jobs/{quote(job_id, safe='')}"


def resource(gw: Gateway, job: Job) -> JobResource:
    token = gw.tokens.issue(job_scope(job.id), job.tenant)
    path = job_path(job.id)
    links = Links(self=path, events=f"{path}/events?token={token}")
    artifacts = [
        ArtifactResource(**a.model_dump(), url=f"{path}/artifacts/{quote(a.name, safe='')}")
        for a in job.artifacts
    ]
    # What the worker applies where the submit left them unset: the handler's declaration,
    # else the settings' defaults (as this gateway knows them).
    declared = gw.job_types.get(job.type)
    effective = {
        "max_attempts": job.max_attempts
        or (declared and declared.max_tries)
        or gw.settings.max_attempts,
        "timeout_s": job.timeout_s
        or (declared and declared.timeout_s)
        or gw.settings.job_timeout_s,
    }
    return JobResource(**{**job.model_dump(), "artifacts": artifacts, **effective}, links=links)


def page_links(gw: Gateway, tenant: str) -> PageLinks:
    return PageLinks(events=f"/v1/events?token={gw.tokens.issue(FIREHOSE_SCOPE, tenant)}")
