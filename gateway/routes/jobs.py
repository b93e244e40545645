"""`/v1/jobs`: submit, read, list, cancel, retry, artifacts."""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import ValidationError
from redis.exceptions import ResponseError

from gateway.access import job_path, own_job, page_links, resource, resource_json, resource_of_dump
from gateway.artifacts import artifact_url
from gateway.deps import Gateway, GatewayDep, Tenant
from gateway.errors import (
    CallbackNotSigned,
    QueueNotConfigured,
    RedisUnavailable,
    TenantQuotaExceeded,
    conveyor_error_body,
    redis_deadline,
    refusal_body,
    validation_body,
)
from gateway.models import (
    ERRORS,
    ActionResult,
    BulkItem,
    BulkResult,
    BulkSubmit,
    ErrorBody,
    JobPage,
    JobResource,
)
from producer import Position, Submitted
from schemas import tracing
from schemas.errors import ConveyorError
from schemas.models import Event, Job, SubmitRequest
from schemas.status import JobStatus

IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
MAYBE_CREATED = (
    "the job may have been created: submit again with the same Idempotency-Key to get that "
    "job rather than a second one"
)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
CACHE_HEADER = "Conveyor-Cache"

SUBMIT_ERRORS: dict[int | str, dict[str, Any]] = {
    **{k: v for k, v in ERRORS.items() if k != 404},
    413: {"model": ErrorBody, "description": "request body over the limit"},
}


@router.post(
    "",
    status_code=202,
    response_model=JobResource,
    responses={
        200: {
            "model": JobResource,
            "description": f"`cache_ttl_s`: the same work succeeded within it: that job, with "
            f"`{CACHE_HEADER}: hit`, and nothing runs",
        },
        **SUBMIT_ERRORS,
    },
)
async def submit(
    body: SubmitRequest,
    gw: GatewayDep,
    tenant: Tenant,
    request: Request,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(description="same key from the same tenant: the same job, whatever the body"),
    ] = None,
) -> Any:
    """A `traceparent` header (W3C Trace Context) makes the job's spans part of the
    caller's trace (README, "Tracing")."""
    if idempotency_key is not None and not IDEMPOTENCY_KEY.fullmatch(idempotency_key):
        return _bad_header("Idempotency-Key", "must be 1-255 visible ASCII characters")
    answer = await submit_job(gw, body, tenant, idempotency_key, request.headers)
    response.status_code = answer.status_code
    response.headers.update(answer.headers)
    return answer.job


@dataclass(frozen=True, slots=True)
class SubmitAnswer:
    """What `POST /v1/jobs` answers, before it is encoded (here, or by gateway.direct):
    the job's resource (`resource_json`)."""

    job: dict[str, Any]
    status_code: int
    headers: dict[str, str]


async def submit_job(
    gw: Gateway,
    body: SubmitRequest,
    tenant: str,
    idempotency_key: str | None,
    headers: Mapping[str, str],
) -> SubmitAnswer:
    """`POST /v1/jobs` once its body, key and header are known good: raises what the
    exception handlers (gateway.errors) answer."""
    settings = gw.settings
    status_code = 202
    answer_headers: dict[str, str] = {}
    name = f"submit {body.type}"
    with tracing.submitting(name, headers, {tracing.JOB_TYPE: body.type}) as traced:
        body = _accepted(gw, body, tenant)
        try:
            async with redis_deadline(settings.redis_timeout_s):
                job, rendered = None, None
                if idempotency_key is not None:
                    job = await _earlier_job(gw, tenant, idempotency_key, body.queue)
                if job is None:
                    quota = await _within_quota(gw, tenant, body.flow_size())
                    submitted = await gw.producer.submit(
                        body,
                        tenant=tenant,
                        idempotency_key=idempotency_key,
                        count_active=quota,
                        trace=traced.trace,
                    )
                    if submitted.fresh is not None:  # built, not read back
                        rendered = resource_of_dump(gw, submitted.fresh.dump())
                    else:
                        job = await gw.producer.get(submitted.queue, submitted.job_id)
                    if submitted.created:
                        gw.metrics.submits.labels(body.type).inc()
                    if body.cache_ttl_s:
                        answer_headers[CACHE_HEADER] = "hit" if submitted.cached else "miss"
                    if submitted.cached:  # an earlier job's result: nothing was accepted to run
                        status_code = 200
        except RedisUnavailable as exc:
            # The script may have run before the answer was lost: say so, and how to find out.
            raise RedisUnavailable(f"{exc}; {MAYBE_CREATED}") from exc
        if rendered is None:
            if job is None:  # expired between the two calls: vanishingly rare, and retryable
                raise RedisUnavailable(
                    f"the job disappeared while it was being read; {MAYBE_CREATED}"
                )
            rendered = resource_json(gw, job)
        traced.created([body], rendered["id"])
    answer_headers["Location"] = job_path(rendered["id"])
    if idempotency_key is not None:
        answer_headers["Idempotency-Key"] = idempotency_key
    return SubmitAnswer(rendered, status_code, answer_headers)


async def _within_quota(gw: Gateway, tenant: str, jobs: int) -> bool:
    """Raises `TenantQuotaExceeded` when `jobs` more would take the tenant past
    CONVEYOR_TENANT_MAX_ACTIVE; True when the quota is on (the new jobs are counted). Read
    before the submit, not in its script (a tenant's jobs span queues, so cluster slots): a
    burst of concurrent submits may pass it by as many as are in flight."""
    limit = gw.settings.tenant_max_active
    if limit is None:
        return False
    active = await gw.producer.tenant_active(gw.settings.queues, tenant)
    if active + jobs > limit:
        raise TenantQuotaExceeded(tenant, active, limit, gw.settings.tenant_quota_retry_after_s)
    return True


def _accepted(gw: Gateway, body: SubmitRequest, tenant: str) -> SubmitRequest:
    """The body with its queues defaulted (the first configured queue; a child's parent's),
    once every job of it has a queue and a type known here, a payload that fits, and a
    callback that can be signed."""
    settings = gw.settings
    body = body.with_queues(settings.queues[0])
    for job in body.flow():
        if job.callback_url and tenant not in settings.webhook_secrets:
            raise CallbackNotSigned(tenant)
        if job.queue not in settings.queues:
            raise QueueNotConfigured(job.queue, settings.queues)
    gw.job_types.check_flow(body)
    return body


@router.post(
    "/bulk",
    status_code=202,
    response_model=BulkResult,
    responses=SUBMIT_ERRORS,
)
async def submit_bulk(body: BulkSubmit, gw: GatewayDep, tenant: Tenant, request: Request) -> Any:
    """Up to 1,000 jobs in one request. Items are independent: one that `POST /v1/jobs`
    would refuse gets its error in its place, and the rest are submitted. A `503` for the
    whole request means none is known to have been created; an item's `503` says why: the
    store was full (nothing of it written), or Redis became unreachable after other items
    were created (it may have been). Every job keeps the request's trace context, as
    `POST /v1/jobs` does."""
    items = await submit_items(gw, body, tenant, request.headers)
    return BulkResult(
        results=[
            BulkItem.model_validate({"status": item.status, "job": item.job, "error": item.error})
            for item in items
        ]
    )


@dataclass(frozen=True, slots=True)
class ItemAnswer:
    """One bulk item's answer, before it is encoded: its job's resource (`resource_json`),
    or an error body."""

    status: int
    job: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


async def submit_items(
    gw: Gateway, body: BulkSubmit, tenant: str, headers: Mapping[str, str]
) -> list[ItemAnswer]:
    """`POST /v1/jobs/bulk` once its body is known good."""
    with tracing.submitting("submit bulk", headers, {}) as traced:
        results = await _submit_items(gw, body, tenant, traced)
    return [item for item in results if item is not None]


async def _submit_items(
    gw: Gateway, body: BulkSubmit, tenant: str, traced: tracing.Submit
) -> list[ItemAnswer | None]:
    results: list[ItemAnswer | None] = [None] * len(body.jobs)
    accepted: list[tuple[int, SubmitRequest]] = []
    default_queue = gw.settings.queues[0]
    for i, raw in enumerate(body.jobs):
        if isinstance(raw, dict) and "queue" not in raw:
            raw["queue"] = default_queue  # as `with_queues` would, without a copy per item
        try:
            accepted.append((i, _accepted(gw, SubmitRequest.model_validate(raw), tenant)))
        except ValidationError as exc:
            results[i] = ItemAnswer(status=422, error=validation_body(exc.errors(), ["jobs", i]))
        except ConveyorError as exc:
            status, error_body = conveyor_error_body(exc)
            results[i] = ItemAnswer(status=status, error=error_body)
    quota = gw.settings.tenant_max_active is not None
    if accepted and quota:
        accepted = await _within_bulk_quota(gw, tenant, accepted, results)
    if accepted:
        await _submit_accepted(gw, tenant, accepted, quota, traced, results)
        traced.created([request for _, request in accepted])
    return results


async def _submit_accepted(
    gw: Gateway,
    tenant: str,
    accepted: list[tuple[int, SubmitRequest]],
    quota: bool,
    traced: tracing.Submit,
    results: list[ItemAnswer | None],
) -> None:
    """Submit the accepted items and answer each: its job (202), the refusal of its script
    call (a 503 when Redis is full; the calls around it ran), or, once Redis became
    unreachable after some answers came in, a 503 saying it may have been created. A 503
    for the whole bulk (raised) means no item's answer came in."""
    requests = [request for _, request in accepted]
    unread: list[tuple[int, Submitted]] = []  # a flow's root: read back
    created: Counter[str] = Counter()
    answered = 0
    try:
        async with redis_deadline(gw.settings.redis_timeout_s):
            stream = gw.producer.submit_answers(
                requests, tenant=tenant, count_active=quota, trace=traced.trace
            )
            async with contextlib.aclosing(stream):
                # Each job rendered as its call's reply comes in, while Redis runs the next.
                async for n, submitted in stream:
                    i, answered = accepted[n][0], answered + 1
                    if isinstance(submitted, ResponseError):
                        status, error_body = refusal_body(submitted)
                        results[i] = ItemAnswer(status=status, error=error_body)
                        continue
                    if submitted.created:  # not a cache hit
                        created[requests[n].type] += 1
                    if submitted.fresh is None:
                        unread.append((i, submitted))
                    else:
                        job = resource_of_dump(gw, submitted.fresh.dump())
                        results[i] = ItemAnswer(status=202, job=job)
            read = await gw.producer.get_many([(s.queue, s.job_id) for _, s in unread])
    except RedisUnavailable as exc:
        if not answered:
            raise RedisUnavailable(f"{exc}; some of the jobs may have been created") from exc
        read = [None] * len(unread)
        unknown = {"error": "unavailable", "message": f"{exc}; this job may have been created"}
        for i, _ in accepted:
            if results[i] is None:
                results[i] = ItemAnswer(status=503, error=unknown)
    for (i, _), found in zip(unread, read, strict=True):
        if found is not None:
            results[i] = ItemAnswer(status=202, job=resource_json(gw, found))
        elif results[i] is None:
            results[i] = ItemAnswer(
                status=503, error={"error": "unavailable", "message": "expired"}
            )
    for job_type, n in created.items():
        gw.metrics.submits.labels(job_type).inc(n)


async def _within_bulk_quota(
    gw: Gateway,
    tenant: str,
    accepted: list[tuple[int, SubmitRequest]],
    results: list[ItemAnswer | None],
) -> list[tuple[int, SubmitRequest]]:
    """The items that fit in the tenant's quota, in order; each one past it gets its 429."""
    limit = gw.settings.tenant_max_active
    assert limit is not None
    async with redis_deadline(gw.settings.redis_timeout_s):
        active = await gw.producer.tenant_active(gw.settings.queues, tenant)
    fitting = []
    for i, request in accepted:
        if active + request.flow_size() <= limit:
            active += request.flow_size()
            fitting.append((i, request))
        else:
            over = TenantQuotaExceeded(
                tenant, active, limit, gw.settings.tenant_quota_retry_after_s
            )
            status, error_body = conveyor_error_body(over)
            results[i] = ItemAnswer(status=status, error=error_body)
    return fitting


async def _earlier_job(gw: GatewayDep, tenant: str, key: str, queue: str) -> Job | None:
    """The job an earlier request with this key created in *another* queue (the submit
    script already answers for the requested queue, atomically)."""
    for other in gw.settings.queues:
        if other != queue:
            job = await gw.producer.idempotent_job(other, tenant, key)
            if job is not None:
                return job
    return None


def _bad_header(name: str, message: str) -> JSONResponse:
    detail = [{"loc": ["header", name], "msg": message, "type": "value_error"}]
    return JSONResponse(
        {"error": "validation_error", "message": f"header.{name}: {message}", "detail": detail},
        status_code=422,
    )


@router.get("", response_model=JobPage, responses={k: v for k, v in ERRORS.items() if k != 404})
async def list_(
    gw: GatewayDep,
    tenant: Tenant,
    status: Annotated[JobStatus | None, Query()] = None,
    type: Annotated[str | None, Query(max_length=128)] = None,
    queue: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=512, description="from `next_cursor`")] = None,
) -> Any:
    settings = gw.settings
    if queue is not None and queue not in settings.queues:
        raise HTTPException(422, f"queue: {queue!r} is not configured")
    try:
        after = decode_cursor(cursor) if cursor is not None else None
    except ValueError:
        raise HTTPException(422, "cursor: not a cursor this API issued") from None
    queues = [q for q in settings.queues if queue is None or q == queue]
    async with redis_deadline(settings.redis_timeout_s):
        page = await gw.producer.list_jobs(
            queues, tenant, limit=limit, after=after, status=status, job_type=type
        )
    return JobPage(
        items=[resource(gw, job) for job in page.jobs],
        next_cursor=encode_cursor(page.next) if page.next else None,
        links=page_links(gw, tenant),
    )


@router.get("/{job_id}", response_model=JobResource, responses=ERRORS)
async def get(job_id: str, gw: GatewayDep, tenant: Tenant) -> Any:
    return resource(gw, await own_job(gw, tenant, job_id))


@router.get("/{job_id}/history", response_model=list[Event], responses=ERRORS)
async def history(job_id: str, gw: GatewayDep, tenant: Tenant) -> Any:
    """The job's events, oldest first: what its SSE stream replays (ids are the same)."""
    job = await own_job(gw, tenant, job_id)
    async with redis_deadline(gw.settings.redis_timeout_s):
        return await gw.producer.events(job.queue, job.id)


ACTION_ERRORS = {
    **ERRORS,
    409: {"model": ErrorBody, "description": "the job's status does not allow it"},
}


@router.post(
    "/{job_id}/cancel", status_code=202, response_model=ActionResult, responses=ACTION_ERRORS
)
async def cancel(job_id: str, gw: GatewayDep, tenant: Tenant) -> Any:
    return await _act(gw, tenant, job_id, gw.producer.cancel)


@router.post(
    "/{job_id}/retry", status_code=202, response_model=ActionResult, responses=ACTION_ERRORS
)
async def retry(
    job_id: str,
    gw: GatewayDep,
    tenant: Tenant,
    from_start: Annotated[
        bool,
        Query(description="forget the recorded steps and run everything again"),
    ] = False,
) -> Any:
    """Re-run a failed or cancelled job. It resumes after its last recorded step."""

    async def retry_job(queue: str, job_id: str) -> str:
        return await gw.producer.retry(queue, job_id, from_start=from_start)

    return await _act(gw, tenant, job_id, retry_job)


async def _act(
    gw: Gateway, tenant: str, job_id: str, action: Callable[[str, str], Awaitable[str]]
) -> ActionResult:
    """Cancel or retry one of the tenant's jobs, answering with the outcome and the job as
    it is after."""
    job = await own_job(gw, tenant, job_id)
    async with redis_deadline(gw.settings.redis_timeout_s):
        outcome = await action(job.queue, job.id)
        after = await gw.producer.get(job.queue, job.id)
    return ActionResult(outcome=outcome, job=resource(gw, after or job))


@router.get(
    "/{job_id}/artifacts/{name}",
    status_code=307,
    response_class=RedirectResponse,
    responses=ERRORS,
)
async def artifact(job_id: str, name: str, gw: GatewayDep, tenant: Tenant) -> Any:
    return RedirectResponse(await artifact_url(gw, tenant, job_id, name), status_code=307)


# The listing's cursor: the store's `Position` of the last entry a page examined, opaque to
# clients. A page resumes strictly after it, whatever is submitted meanwhile.


def encode_cursor(position: Position) -> str:
    raw = json.dumps([position.score, position.job_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> Position:
    """Raises ValueError for anything that is not a cursor we issued."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        score, job_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ValueError("not a valid cursor") from exc
    if not isinstance(score, int) or not isinstance(job_id, str) or isinstance(score, bool):
        raise ValueError("not a valid cursor")
    return Position(score, job_id)
