"""Each API call as data, shared by `Client` and `AsyncClient`: the request, whether it may be
sent again once it may have reached the gateway, and how the answer is read."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import TypeAdapter

from conveyor.client.errors import ApiError, api_error
from conveyor.client.models import Event, Job, JobPage, SubmitOptions

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 10.0
# The gateway pings every 15 s: this long without a byte means the connection is dead.
STREAM_READ_TIMEOUT_S = 60.0
BULK_CHUNK = 1000  # what `POST /v1/jobs/bulk` takes in one request

_EVENTS = TypeAdapter(list[Event])


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    read: Callable[[httpx.Response], T]
    params: dict[str, str] = field(default_factory=dict)
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    # Safe to send again after a lost answer or a 503: the gateway does not do it twice.
    idempotent: bool = True

    def request(
        self, http: httpx.Client | httpx.AsyncClient, base_url: str, api_key: str
    ) -> httpx.Request:
        return http.build_request(
            self.method,
            base_url + self.path,
            params=self.params or None,
            json=self.json,
            headers={"Authorization": f"Bearer {api_key}", **self.headers},
        )


def streaming(timeout: httpx.Timeout) -> httpx.Timeout:
    """`timeout` for an SSE response, which is quiet between the gateway's pings."""
    return httpx.Timeout(
        connect=timeout.connect, read=STREAM_READ_TIMEOUT_S, write=timeout.write, pool=timeout.pool
    )


def job_path(job_id: str) -> str:
    return f"/v1/jobs/{quote(job_id, safe='')}"


def _job(response: httpx.Response) -> Job:
    return Job.model_validate(response.json())


def _acted_on(response: httpx.Response) -> Job:
    """Cancel and retry answer `{outcome, job}`; the job after says what the outcome was."""
    return Job.model_validate(response.json()["job"])


def submit(job_type: str, payload: Mapping[str, Any] | None, options: SubmitOptions) -> Call[Job]:
    body: dict[str, Any] = {"type": job_type, **options}
    key = body.pop("idempotency_key", None)
    if payload is not None:
        body["payload"] = dict(payload)
    return Call(
        "POST",
        "/v1/jobs",
        _job,
        json=body,
        headers={"Idempotency-Key": key} if key is not None else {},
        idempotent=key is not None,
    )


def chunks(jobs: Iterable[Mapping[str, Any]]) -> Iterator[list[Mapping[str, Any]]]:
    """`jobs` in lists of at most `BULK_CHUNK`."""
    it = iter(jobs)
    while chunk := list(itertools.islice(it, BULK_CHUNK)):
        yield chunk


def submit_bulk(jobs: Sequence[Mapping[str, Any]]) -> Call[list[Job | ApiError]]:
    # No Idempotency-Key here: after a lost answer some jobs may exist, so never resent.
    body = {"jobs": [dict(job) for job in jobs]}
    return Call("POST", "/v1/jobs/bulk", _bulk_results, json=body, idempotent=False)


def _bulk_results(response: httpx.Response) -> list[Job | ApiError]:
    results: list[Job | ApiError] = []
    for item in response.json()["results"]:
        if item.get("job") is not None:
            results.append(Job.model_validate(item["job"]))
        else:
            results.append(api_error(item["status"], item.get("error")))
    return results


def get(job_id: str) -> Call[Job]:
    return Call("GET", job_path(job_id), _job)


def list_page(
    status: str | None,
    job_type: str | None,
    queue: str | None,
    limit: int | None,
    cursor: str | None,
) -> Call[JobPage]:
    given = {"status": status, "type": job_type, "queue": queue, "limit": limit, "cursor": cursor}
    params = {name: str(value) for name, value in given.items() if value is not None}
    return Call("GET", "/v1/jobs", lambda r: JobPage.model_validate(r.json()), params=params)


def cancel(job_id: str) -> Call[Job]:
    # Not sent again: after a lost answer, a repeat would be refused (409, it is cancelled)
    # and report as failed a cancel that worked.
    return Call("POST", f"{job_path(job_id)}/cancel", _acted_on, idempotent=False)


def retry(job_id: str, from_start: bool) -> Call[Job]:
    # Not sent again: a repeat arriving after the retried job failed anew would run it again.
    params = {"from_start": "true"} if from_start else {}
    return Call("POST", f"{job_path(job_id)}/retry", _acted_on, params=params, idempotent=False)


def history(job_id: str) -> Call[list[Event]]:
    return Call("GET", f"{job_path(job_id)}/history", lambda r: _EVENTS.validate_json(r.content))


def events(job_id: str, last_event_id: str | None) -> Call[None]:
    """The SSE stream; read line by line by the clients, not by `read`."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    headers["Accept"] = "text/event-stream"
    return Call("GET", f"{job_path(job_id)}/events", lambda _: None, headers=headers)
