"""schemas/tracing.py: the context a job keeps, the spans' parents, and no-ops without
OpenTelemetry."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from schemas import tracing
from tests.fixtures.processes import REPO

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_the_field_a_job_keeps_is_the_w3c_carrier_in_one_string() -> None:
    carrier = {"traceparent": TRACEPARENT, "tracestate": "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"}
    kept = tracing.pack(carrier)
    assert kept == f"{TRACEPARENT} congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    assert tracing.unpack(kept) == carrier
    assert tracing.unpack(tracing.pack({"traceparent": TRACEPARENT})) == {
        "traceparent": TRACEPARENT
    }


@pytest.mark.parametrize(
    "traceparent",
    [
        "",
        "00-xyz-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero ids are invalid
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # lowercase only
        f"{TRACEPARENT}\r\nX-Injected: 1",
    ],
)
def test_a_context_that_is_not_w3c_is_not_kept(traceparent: str) -> None:
    assert tracing.pack({"traceparent": traceparent, "tracestate": "a=b"}) == ""


def test_a_tracestate_that_could_not_be_sent_again_is_dropped() -> None:
    assert tracing.pack({"traceparent": TRACEPARENT, "tracestate": "a=b\nc=d"}) == TRACEPARENT
    assert tracing.pack({"traceparent": TRACEPARENT, "tracestate": "x" * 513}) == TRACEPARENT


def test_without_a_tracer_provider_nothing_is_made() -> None:
    assert tracing.tracer() is None and not tracing.active()
    with tracing.submitting("submit noop", {"traceparent": TRACEPARENT}, {}) as submit:
        assert submit.span is None
        submit.created([])
    assert submit.trace == TRACEPARENT  # passed on as it came
    with tracing.attempt("", "j1", "noop", "q", 1) as span:
        assert span is None
    with tracing.step(span, "one") as step:
        assert step is None


def test_without_opentelemetry_importable_the_seam_is_a_no_op(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As in a process without the `otel` extra (and without FastAPI's dependency on the
    API): the modules are unimportable, and every function still answers."""
    for name in [m for m in sys.modules if m == "opentelemetry" or m.startswith("opentelemetry.")]:
        monkeypatch.setitem(sys.modules, name, None)  # `import` of it raises ImportError
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(ImportError):
        import opentelemetry.trace  # noqa: F401
    assert tracing.tracer() is None and not tracing.active()
    with tracing.submitting("submit noop", {}, {}) as submit:
        submit.created([])
    assert submit == tracing.Submit("")
    with tracing.attempt("", "j1", "noop", "q", 1) as span:
        tracing.ended(span, "succeeded", ValueError("x"))
        with tracing.step(span, "one") as step:
            tracing.step_state(step, "succeeded")
    assert tracing.context_of(None) == ""


def test_a_worker_imports_no_opentelemetry_until_something_installs_a_provider() -> None:
    """The seam looks the API up in `sys.modules` rather than importing it: a worker that
    does not trace does not load it (the gateway does anyway: FastAPI imports the API)."""
    code = (
        "import sys, consumers.worker, conveyor.cli, conveyor.telemetry, schemas.tracing\n"
        "assert not schemas.tracing.active()\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_a_submit_with_no_http_span_is_the_requests_server_span(
    spans: InMemorySpanExporter,
) -> None:
    with tracing.submitting("submit noop", {"traceparent": TRACEPARENT}, {}) as submit:
        submit.created([])
    (span,) = spans.get_finished_spans()
    assert span.kind is SpanKind.SERVER
    assert span.parent is not None and span.parent.span_id == 0x00F067AA0BA902B7
    assert span.context is not None
    assert submit.trace == f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-01"


def test_a_submit_under_an_http_span_is_its_child(spans: InMemorySpanExporter) -> None:
    """An HTTP instrumentation's span already took the request's context: the headers are
    not read again."""
    tracer = trace.get_tracer("test")
    with (
        tracer.start_as_current_span("POST /v1/jobs", kind=SpanKind.SERVER) as http,
        tracing.submitting("submit noop", {"traceparent": TRACEPARENT}, {}),
    ):
        pass
    submit, _ = spans.get_finished_spans()
    assert submit.kind is SpanKind.PRODUCER
    assert submit.parent is not None and submit.parent.span_id == http.get_span_context().span_id


def test_an_attempt_of_a_job_without_a_context_starts_a_trace_of_its_own(
    spans: InMemorySpanExporter,
) -> None:
    with (
        trace.get_tracer("test").start_as_current_span("unrelated"),
        tracing.attempt("", "j1", "noop", "q", 1) as span,
    ):
        tracing.ended(span, "succeeded")
    attempt, _ = spans.get_finished_spans()
    assert attempt.parent is None
    assert attempt.attributes is not None and attempt.attributes[tracing.OUTCOME] == "succeeded"


def test_a_cancelled_step_is_not_a_failed_one(spans: InMemorySpanExporter) -> None:
    with tracing.attempt(TRACEPARENT, "j1", "noop", "q", 1) as attempt:
        with pytest.raises(asyncio.CancelledError), tracing.step(attempt, "wait"):
            raise asyncio.CancelledError
        with pytest.raises(ValueError), tracing.step(attempt, "boom"):
            raise ValueError("no")
    cancelled, failed, _ = spans.get_finished_spans()
    assert cancelled.attributes is not None and failed.attributes is not None
    assert cancelled.attributes[tracing.STEP_STATE] == "cancelled"
    assert cancelled.status.status_code is StatusCode.UNSET and not cancelled.events
    assert failed.attributes[tracing.STEP_STATE] == "failed"
    assert failed.status.status_code is StatusCode.ERROR
    assert [event.name for event in failed.events] == ["exception"]
