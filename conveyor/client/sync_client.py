"""`Client`: the gateway's HTTP API from blocking code."""

from __future__ import annotations

import builtins
import time
from collections.abc import Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar, Unpack

import httpx

from conveyor.client import calls
from conveyor.client.errors import (
    ApiError,
    NetworkError,
    TimeoutError,
    ended,
    error_for,
    retry_after,
)
from conveyor.client.models import Event, Job, JobPage, SubmitOptions
from conveyor.client.retries import Retries, transient
from conveyor.client.sse import Decoder, Resume

T = TypeVar("T")


class Client:
    """`Client(url, api_key)`: every call of the gateway's `/v1/jobs` API, as methods that
    return typed snapshots and raise the `ConveyorError` tree (conveyor.client.errors).

    Use it as a context manager, or call `close()`. `transport` (an httpx transport, e.g.
    `httpx.MockTransport`) or `http` (an `httpx.Client` of your own, left open) replace the
    connection pool it would make; `timeout` bounds each request, `retries` how transient
    failures are retried (see `Retries`; `submit` says which calls are)."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float | httpx.Timeout = calls.DEFAULT_TIMEOUT_S,
        retries: Retries | None = None,
        transport: httpx.BaseTransport | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        if http is not None and transport is not None:
            raise ValueError("give `transport` or `http`, not both")
        self.url = url.rstrip("/")
        self.retries = retries or Retries()
        self._api_key = api_key
        self._owns_http = http is None
        self._http = http or httpx.Client(timeout=timeout, transport=transport)

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Client {self.url}>"

    # --- jobs ------------------------------------------------------------------------------

    def submit(
        self,
        type: str,
        payload: Mapping[str, Any] | None = None,
        **options: Unpack[SubmitOptions],
    ) -> Job:
        """Submit a job; its snapshot as accepted (`status` queued, scheduled, ...).

        Retried on a transient failure only with an `idempotency_key`: once a submit may have
        reached the gateway, a lost answer or a 503 can hide a job that was created, and only
        the key makes a second submit return that job instead of creating another. Without
        one, it is retried only when the connection could not be opened at all."""
        return self._call(calls.submit(type, payload, options))

    def submit_many(self, jobs: Iterable[Mapping[str, Any]]) -> builtins.list[Job | ApiError]:
        """Submit each of `jobs` (bodies of `POST /v1/jobs`: `{"type", "payload", ...}`), up to
        1,000 per request. One result per job, in order: its snapshot, or the error it would
        have raised alone (returned, not raised: the others were submitted)."""
        results: builtins.list[Job | ApiError] = []
        for chunk in calls.chunks(jobs):
            submitted = self._call(calls.submit_bulk(chunk))
            results += submitted
        return results

    def get(self, job_id: str) -> Job:
        return self._call(calls.get(job_id))

    def list(
        self,
        *,
        status: str | None = None,
        type: str | None = None,
        queue: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> JobPage:
        """One page of your jobs, newest first; pass its `next_cursor` as `cursor` for the
        next. `list_all` walks every page."""
        return self._call(calls.list_page(status, type, queue, limit, cursor))

    def list_all(
        self,
        *,
        status: str | None = None,
        type: str | None = None,
        queue: str | None = None,
        page_size: int = 100,
    ) -> Iterator[Job]:
        """Every job `list` would show, page after page, fetched as iteration reaches it."""
        cursor = None
        while True:
            page = self.list(status=status, type=type, queue=queue, limit=page_size, cursor=cursor)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def cancel(self, job_id: str) -> Job:
        """Cancel the job; the snapshot after: `cancelled`, or still `running` with
        `cancel_requested` while its worker stops it; a job cancelled before answers the
        same again. `Conflict` when it already succeeded or failed."""
        return self._call(calls.cancel(job_id))

    def retry(self, job_id: str, *, from_start: bool = False) -> Job:
        """Queue a failed or cancelled job again; it resumes after its last recorded step,
        or runs every step again with `from_start`."""
        return self._call(calls.retry(job_id, from_start))

    def history(self, job_id: str) -> builtins.list[Event]:
        """The job's events so far, oldest first."""
        return self._call(calls.history(job_id))

    # --- following a job --------------------------------------------------------------------

    def events(self, job_id: str, *, last_event_id: str | None = None) -> Iterator[Event]:
        """Every event of the job, oldest first, then live as they happen; the iteration ends
        after the terminal one (of its latest run, for a job retried before the call). Or only
        those after `last_event_id`.

        A dropped connection or a restarted gateway is resumed with `Last-Event-ID`: nothing
        is missed or repeated (only `job.progress` events may be coalesced while live, as the
        gateway sends them at most every CONVEYOR_SSE_PROGRESS_INTERVAL_S)."""
        return self._events(job_id, last_event_id, deadline=None)

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Block until the job ends; its final snapshot if it succeeded. Raises `JobFailed`
        or `JobCancelled` (with `.job`) otherwise, `TimeoutError` after `timeout` seconds.

        The deadline is checked whenever the gateway sends anything (an event, or its ping
        every 15 s) and bounds each read, so on a busy stream it is kept to within the gap
        between two of them."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                job = self._call(calls.get(job_id), deadline)
                if job.status.is_terminal:
                    return ended(job)
                for _event in self._events(job_id, job.last_event_id or "0-0", deadline):
                    pass  # until the terminal event, where the iteration ends
                # Read the job again: retried in between, it is running once more.
        except TimeoutError as exc:
            raise TimeoutError(f"job {job_id} did not end within {timeout}s") from exc

    # --- plumbing ---------------------------------------------------------------------------

    def _call(self, call: calls.Call[T], deadline: float | None = None) -> T:
        request = call.request(self._http, self.url, self._api_key)
        failures = 0
        while True:
            _check(deadline)
            request.extensions["timeout"] = self._timeout(deadline).as_dict()
            try:
                response = self._http.send(request)
            except httpx.TransportError as exc:
                failures += 1
                delay = self.retries.after(failures, exc, idempotent=call.idempotent)
                if delay is None:
                    raise NetworkError(f"{call.method} {request.url}: {exc!r}") from exc
            else:
                if response.is_success:
                    return call.read(response)
                failures += 1
                delay = self.retries.after(failures, response, idempotent=call.idempotent)
                if delay is None:
                    raise error_for(response)
            _sleep(delay, deadline)

    def _events(self, job_id: str, last_id: str | None, deadline: float | None) -> Iterator[Event]:
        if last_id is None:
            # Not up to its first terminal event: a job retried since has events after it.
            history = self._call(calls.history(job_id), deadline)
            yield from history
            if history and history[-1].is_terminal:
                return
            last_id = history[-1].id if history else None
        resume = Resume(last_id, self.retries)
        while True:
            _check(deadline)
            call = calls.events(job_id, resume.last_id)
            request = call.request(self._http, self.url, self._api_key)
            timeout = self._timeout(deadline, streaming=True)
            request.extensions["timeout"] = timeout.as_dict()
            wait_after: float | None = None
            try:
                response = self._http.send(request, stream=True)
                try:
                    if not response.is_success:
                        response.read()
                        if not transient(response):
                            raise error_for(response)
                        wait_after = retry_after(response)
                    else:
                        decoder = Decoder()
                        for line in response.iter_lines():
                            _check(deadline)
                            message = decoder.feed(line)
                            delivered = resume.accept(message) if message else None
                            if delivered is not None:
                                yield delivered
                                if resume.done:
                                    return
                finally:
                    response.close()
            except httpx.TransportError as exc:
                _check(deadline)
                delay = resume.interrupted()
                if delay is None:
                    raise NetworkError(f"events of job {job_id}: {exc!r}") from exc
                _sleep(delay, deadline)
                continue
            delay = resume.interrupted(wait_after)
            if delay is None:
                if response.is_success:
                    raise NetworkError(f"events of job {job_id}: the stream keeps ending early")
                raise error_for(response)
            _sleep(delay, deadline)

    def _timeout(self, deadline: float | None, *, streaming: bool = False) -> httpx.Timeout:
        """The client's timeouts, each cut to what is left before `deadline`."""
        timeout = calls.streaming(self._http.timeout) if streaming else self._http.timeout
        if deadline is None:
            return timeout
        remaining = max(deadline - time.monotonic(), 0.001)
        return httpx.Timeout(
            connect=_at_most(timeout.connect, remaining),
            read=_at_most(timeout.read, remaining),
            write=_at_most(timeout.write, remaining),
            pool=_at_most(timeout.pool, remaining),
        )


def _at_most(value: float | None, limit: float) -> float:
    return limit if value is None else min(value, limit)


def _check(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise TimeoutError("past the deadline")


def _sleep(delay: float, deadline: float | None) -> None:
    if deadline is not None:
        delay = min(delay, max(deadline - time.monotonic(), 0))
    time.sleep(delay)
