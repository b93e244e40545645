"""Reading a caller's own jobs: another tenant's job is answered exactly like a missing one."""

from __future__ import annotations

from typing import Any
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
    return JobResource(
        **{
            **job.model_dump(),
            "artifacts": artifacts,
            **_effective(gw, job.type, job.max_attempts, job.timeout_s),
        },
        links=links,
    )


def resource_json(gw: Gateway, job: Job) -> dict[str, Any]:
    """`resource(gw, job)` as its JSON (`model_dump(mode="json", by_alias=True)`), built
    from the job's own dump without a second model: what `POST /v1/jobs` answers with."""
    return resource_of_dump(gw, job.model_dump(mode="json"))


def resource_of_dump(gw: Gateway, data: dict[str, Any]) -> dict[str, Any]:
    """`resource_json` from the job's dump (`Job.model_dump(mode="json")`, or `FreshJob.dump`
    for a job just created), which it completes in place."""
    job_id = data["id"]
    path = job_path(job_id)
    if data["artifacts"]:
        data["artifacts"] = [
            {**a, "url": f"{path}/artifacts/{quote(a['name'], safe='')}"} for a in data["artifacts"]
        ]
    data.update(_effective(gw, data["type"], data["max_attempts"], data["timeout_s"]))
    token = gw.tokens.issue(job_scope(job_id), data["tenant"])
    data["links"] = {"self": path, "events": f"{path}/events?token={token}"}
    return data


def _effective(
    gw: Gateway, job_type: str, max_attempts: int | None, timeout_s: float | None
) -> dict[str, Any]:
    """What the worker applies where the submit left them unset: the handler's declaration,
    else the settings' defaults (as this gateway knows them)."""
    declared = gw.job_types.get(job_type)
    return {
        "max_attempts": int(
            max_attempts or (declared and declared.max_tries) or gw.settings.max_attempts
        ),
        "timeout_s": float(
            timeout_s or (declared and declared.timeout_s) or gw.settings.job_timeout_s
        ),
    }


def page_links(gw: Gateway, tenant: str) -> PageLinks:
    return PageLinks(events=f"/v1/events?token={gw.tokens.issue(FIREHOSE_SCOPE, tenant)}")
