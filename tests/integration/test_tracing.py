"""One trace from an HTTP submit through every attempt and every step: the gateway (its app
under ASGITransport) and a worker run in this process, so one in-memory exporter sees both
sides, on real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from asgi_lifespan import LifespanManager
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from consumers.worker import ConveyorWorker, connect
from conveyor.gateway_app import gateway_app
from schemas import tracing
from schemas.keys import QueueKeys
from schemas.settings import Settings

pytestmark = pytest.mark.integration

A = {"Authorization": "Bearer key-a"}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory(
        handlers="tests.handlers",
        api_keys={"key-a": "acme"},
        backoff_base_s=0.05,
        backoff_max_s=0.1,
    )


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = gateway_app(settings)
    transport = httpx.ASGITransport(app, raise_app_exceptions=False)
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=transport, base_url="http://gw") as http,
    ):
        yield http


async def submit(
    http: httpx.AsyncClient, headers: dict[str, str] | None = None, **body: Any
) -> str:
    response = await http.post("/v1/jobs", json=body, headers={**A, **(headers or {})})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


async def drain(settings: Settings) -> ConveyorWorker:
    """A burst worker in this process, until the queue (retries included) is empty."""
    worker = ConveyorWorker(
        settings, connect(settings), queue=settings.queues[0], handle_signals=False, burst=True
    )
    await worker.async_run()
    await worker.close()
    assert worker.jobs_failed == 0
    return worker


async def kept(redis: aioredis.Redis, settings: Settings, job_id: str) -> str | None:
    """The trace context the job's hash keeps."""
    value: str | None = await redis.hget(QueueKeys(settings.queues[0]).job(job_id), "trace")
    return value


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    assert span.context is not None
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"


def parent_of(span: ReadableSpan) -> str | None:
    return f"{span.parent.span_id:016x}" if span.parent is not None else None


def named(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def attempts_of(spans: Sequence[ReadableSpan], job_id: str) -> list[ReadableSpan]:
    found = [
        s for s in spans if s.kind is SpanKind.CONSUMER and s.attributes[tracing.JOB_ID] == job_id
    ]
    return sorted(found, key=lambda s: s.attributes[tracing.ATTEMPT])


def steps_of(spans: Sequence[ReadableSpan], attempt: ReadableSpan) -> dict[str, str]:
    """Step name -> state, of the steps whose spans are children of `attempt`'s."""
    _, attempt_id = hex_ids(attempt)
    return {
        str(s.attributes[tracing.STEP]): str(s.attributes[tracing.STEP_STATE])
        for s in spans
        if s.name.startswith("step ") and parent_of(s) == attempt_id
    }


def check_attempts_and_steps(
    spans: Sequence[ReadableSpan], job_id: str, submit_span: ReadableSpan, failing: str
) -> None:
    """A multi-step job whose step `failing` failed its first attempt: two attempt spans,
    children of the submit's, and each step a child of its attempt's."""
    _, submit_id = hex_ids(submit_span)
    first, second = attempts_of(spans, job_id)
    for attempt in (first, second):
        assert parent_of(attempt) == submit_id
        assert attempt.name == f"run {attempt.attributes[tracing.JOB_TYPE]}"
        assert attempt.attributes["messaging.destination.name"] == attempt.attributes[tracing.QUEUE]
    assert first.attributes[tracing.OUTCOME] == "retrying"
    assert first.status.status_code is StatusCode.ERROR
    assert [event.name for event in first.events] == ["exception"]
    assert second.attributes[tracing.OUTCOME] == "succeeded"
    assert second.status.status_code is StatusCode.UNSET

    before, after = steps_of(spans, first), steps_of(spans, second)
    assert before[failing] == "failed" and after[failing] == "succeeded"
    assert {k: v for k, v in before.items() if k != failing} == dict.fromkeys(
        set(before) - {failing}, "succeeded"
    )
    assert {k: v for k, v in after.items() if k != failing} == dict.fromkeys(
        set(after) - {failing}, "restored"
    )
    (failed_step,) = [
        s for s in spans if s.name == f"step {failing}" and parent_of(s) == hex_ids(first)[1]
    ]
    assert failed_step.status.status_code is StatusCode.ERROR
    assert [event.name for event in failed_step.events] == ["exception"]


async def test_a_callers_trace_runs_through_the_submit_every_attempt_and_every_step(
    client: httpx.AsyncClient,
    settings: Settings,
    redis: aioredis.Redis,
    spans: InMemorySpanExporter,
    tmp_path: Path,
) -> None:
    headers = {"traceparent": TRACEPARENT, "tracestate": "congo=t61rcWkgMzE"}
    payload = {"path": str(tmp_path / "runs"), "fail_third": 1}
    job_id = await submit(client, headers, type="pipeline", payload=payload)
    threaded_id = await submit(
        client,
        headers,
        type="pipeline_def",
        payload={"path": str(tmp_path / "def-runs"), "fail_second": 1},
    )
    await drain(settings)

    finished = spans.get_finished_spans()
    assert {hex_ids(s)[0] for s in finished} == {TRACE_ID}
    # The gateway's spans hang off the caller's: each request's HTTP span (FastAPI's own,
    # once a provider is installed) is the child of the caller's span.
    servers = [s for s in finished if s.kind is SpanKind.SERVER]
    assert [parent_of(s) for s in servers] == [CALLER_SPAN] * 2
    assert all(s.parent is not None and s.parent.is_remote for s in servers)

    for job, step_failing, job_type in (
        (job_id, "three", "pipeline"),
        (threaded_id, "b", "pipeline_def"),
    ):
        (submit_span,) = [
            s for s in named(finished, f"submit {job_type}") if s.attributes[tracing.JOB_ID] == job
        ]
        assert submit_span.kind is SpanKind.PRODUCER
        assert submit_span.attributes[tracing.QUEUE] == settings.queues[0]
        # The job keeps the submit span's context, the caller's tracestate with it.
        trace_id, submit_id = hex_ids(submit_span)
        assert await kept(redis, settings, job) == f"00-{trace_id}-{submit_id}-01 congo=t61rcWkgMzE"
        check_attempts_and_steps(finished, job, submit_span, step_failing)
        for attempt in attempts_of(finished, job):
            assert attempt.context is not None
            assert attempt.context.trace_state.get("congo") == "t61rcWkgMzE"


async def test_a_submit_without_a_traceparent_starts_the_trace(
    client: httpx.AsyncClient, settings: Settings, spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    payload = {"path": str(tmp_path / "runs"), "fail_third": 1}
    job_id = await submit(client, type="pipeline", payload=payload)
    await drain(settings)

    finished = spans.get_finished_spans()
    (trace_id,) = {hex_ids(s)[0] for s in finished}
    assert trace_id != TRACE_ID
    (root,) = [s for s in finished if s.parent is None]
    assert root.kind is SpanKind.SERVER
    (submit_span,) = named(finished, "submit pipeline")
    check_attempts_and_steps(finished, job_id, submit_span, "three")


async def test_a_flows_children_a_follow_up_and_a_bulks_jobs_join_the_submits_trace(
    client: httpx.AsyncClient,
    settings: Settings,
    redis: aioredis.Redis,
    spans: InMemorySpanExporter,
) -> None:
    headers = {"traceparent": TRACEPARENT}
    flow = {
        "type": "gather",
        "payload": {"follow_up": "tick"},
        "children": [{"type": "tick", "payload": {"i": i}} for i in range(2)],
    }
    parent_id = await submit(client, headers, **flow)
    response = await client.post(
        "/v1/jobs/bulk",
        json={"jobs": [{"type": "noop"}, {"type": "noop", "payload": {"n": 2}}]},
        headers={**A, **headers},
    )
    bulk_ids = [item["job"]["id"] for item in response.json()["results"]]
    await drain(settings)

    finished = spans.get_finished_spans()
    assert {hex_ids(s)[0] for s in finished} == {TRACE_ID}
    (flow_submit,) = named(finished, "submit gather")
    assert flow_submit.attributes[tracing.JOBS] == 3
    (bulk_submit,) = named(finished, "submit bulk")
    assert bulk_submit.attributes[tracing.JOBS] == 2
    runs = {str(s.attributes[tracing.JOB_ID]): s for s in finished if s.kind is SpanKind.CONSUMER}

    # The flow's children carry the parent's submit context.
    children = [job_id for job_id, span in runs.items() if span.name == "run tick"]
    parent_run = runs[parent_id]
    (follow_up,) = [
        job_id
        for job_id in children
        if parent_of(runs[job_id]) == hex_ids(parent_run)[1]  # submitted from its attempt
    ]
    for job_id in [parent_id, *(c for c in children if c != follow_up)]:
        assert parent_of(runs[job_id]) == hex_ids(flow_submit)[1]
        assert await kept(redis, settings, job_id) == f"00-{TRACE_ID}-{hex_ids(flow_submit)[1]}-01"
    assert len(children) == 3
    for job_id in bulk_ids:
        assert parent_of(runs[job_id]) == hex_ids(bulk_submit)[1]


async def test_without_a_tracer_provider_a_job_keeps_the_callers_context_as_it_came(
    client: httpx.AsyncClient, settings: Settings, redis: aioredis.Redis
) -> None:
    """No span is made (nothing installed one), but the context is passed on, so workers that
    do trace still join the caller's trace; a job submitted without one has no field."""
    traced = await submit(client, {"traceparent": TRACEPARENT}, type="noop")
    untraced = await submit(client, type="noop")
    garbled = await submit(client, {"traceparent": "00-xyz-01"}, type="noop")
    assert await kept(redis, settings, traced) == TRACEPARENT
    assert await kept(redis, settings, untraced) is None
    assert await kept(redis, settings, garbled) is None
