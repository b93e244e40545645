"""`AsyncClient`: the gateway's HTTP API from asyncio code. Method for method the same as
`Client` (conveyor/client/sync_client.py, whose docstrings say more), awaited."""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from contextlib import aclosing
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


class AsyncClient:
    """`AsyncClient(url, api_key)`, used as `async with`, or closed with `aclose()`.
    `transport` (an `httpx.AsyncBaseTransport`, e.g. `httpx.MockTransport`) or `http` (an
    `httpx.AsyncClient` of your own, left open) replace the pool it would make."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float | httpx.Timeout = calls.DEFAULT_TIMEOUT_S,
        retries: Retries | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        if http is not None and transport is not None:
            raise ValueError("give `transport` or `http`, not both")
        self.url = url.rstrip("/")
        self.retries = retries or Retries()
        self._api_key = api_key
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(timeout=timeout, transport=transport)

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<AsyncClient {self.url}>"

    # --- jobs ------------------------------------------------------------------------------

    async def submit(
        self,
        type: str,
        payload: Mapping[str, Any] | None = None,
        **options: Unpack[SubmitOptions],
    ) -> Job:
        """See `Client.submit`: retried only with an `idempotency_key` (or when the
        connection could not be opened), since a lost answer can hide a created job."""
        return await self._call(calls.submit(type, payload, options))

    async def submit_many(self, jobs: Iterable[Mapping[str, Any]]) -> builtins.list[Job | ApiError]:
        results: builtins.list[Job | ApiError] = []
        for chunk in calls.chunks(jobs):
            submitted = await self._call(calls.submit_bulk(chunk))
            results += submitted
        return results

    async def get(self, job_id: str) -> Job:
        return await self._call(calls.get(job_id))

    async def list(
        self,
        *,
        status: str | None = None,
        type: str | None = None,
        queue: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> JobPage:
        return await self._call(calls.list_page(status, type, queue, limit, cursor))

    async def list_all(
        self,
        *,
        status: str | None = None,
        type: str | None = None,
        queue: str | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[Job]:
        cursor = None
        while True:
            page = await self.list(
                status=status, type=type, queue=queue, limit=page_size, cursor=cursor
            )
            for job in page.items:
                yield job
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def cancel(self, job_id: str) -> Job:
        return await self._call(calls.cancel(job_id))

    async def retry(self, job_id: str, *, from_start: bool = False) -> Job:
        return await self._call(calls.retry(job_id, from_start))

    async def history(self, job_id: str) -> builtins.list[Event]:
        return await self._call(calls.history(job_id))

    # --- following a job --------------------------------------------------------------------

    def events(
        self, job_id: str, *, last_event_id: str | None = None
    ) -> AsyncGenerator[Event, None]:
        """See `Client.events`. Leaving the loop early leaves the connection open until the
        iterator is closed: wrap it in `contextlib.aclosing` to close it at once."""
        return self._events(job_id, last_event_id)

    async def wait(self, job_id: str, timeout: float | None = None) -> Job:  # noqa: ASYNC109
        """See `Client.wait`; here the timeout is exact."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    job = await self.get(job_id)
                    if job.status.is_terminal:
                        return ended(job)
                    async with aclosing(self._events(job_id, job.last_event_id or "0-0")) as it:
                        async for _event in it:
                            pass  # until the terminal event, where the iteration ends
        except builtins.TimeoutError as exc:
            raise TimeoutError(f"job {job_id} did not end within {timeout}s") from exc

    # --- plumbing ---------------------------------------------------------------------------

    async def _call(self, call: calls.Call[T]) -> T:
        request = call.request(self._http, self.url, self._api_key)
        failures = 0
        while True:
            try:
                response = await self._http.send(request)
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
            await asyncio.sleep(delay)

    async def _events(self, job_id: str, last_id: str | None) -> AsyncGenerator[Event, None]:
        if last_id is None:
            # Not up to its first terminal event: a job retried since has events after it.
            history = await self.history(job_id)
            for event in history:
                yield event
            if history and history[-1].is_terminal:
                return
            last_id = history[-1].id if history else None
        resume = Resume(last_id, self.retries)
        timeout = calls.streaming(self._http.timeout)
        while True:
            call = calls.events(job_id, resume.last_id)
            request = call.request(self._http, self.url, self._api_key)
            request.extensions["timeout"] = timeout.as_dict()
            wait_after: float | None = None
            try:
                response = await self._http.send(request, stream=True)
                try:
                    if not response.is_success:
                        await response.aread()
                        if not transient(response):
                            raise error_for(response)
                        wait_after = retry_after(response)
                    else:
                        decoder = Decoder()
                        async for line in response.aiter_lines():
                            message = decoder.feed(line)
                            delivered = resume.accept(message) if message else None
                            if delivered is not None:
                                yield delivered
                                if resume.done:
                                    return
                finally:
                    await response.aclose()
            except httpx.TransportError as exc:
                delay = resume.interrupted()
                if delay is None:
                    raise NetworkError(f"events of job {job_id}: {exc!r}") from exc
                await asyncio.sleep(delay)
                continue
            delay = resume.interrupted(wait_after)
            if delay is None:
                if response.is_success:
                    raise NetworkError(f"events of job {job_id}: the stream keeps ending early")
                raise error_for(response)
            await asyncio.sleep(delay)
