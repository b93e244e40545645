"""Tracing: the spans Conveyor makes, through the OpenTelemetry API, and the trace context a
job keeps so that its attempts join the trace of its submit.

    submit {type}   the gateway, one per submit (`submit bulk` for `/v1/jobs/bulk`): PRODUCER,
                    under the request's HTTP span when an instrumentation made one (FastAPI's
                    own does, once a tracer provider is installed), else the request's SERVER
                    span, child of the caller's `traceparent` or the root of a new trace
    run {type}      a worker, one per attempt: CONSUMER, child of its job's submit span
    step {name}     a worker, one per `ctx.step` of an attempt: INTERNAL, child of the
                    attempt's span (a step restored from an earlier attempt gets a short one)

A job keeps its submit's context in its hash, field `trace`: the W3C `traceparent` of the
submit span, then a space and the `tracestate` when there is one (a traceparent never holds a
space). Every job of a flow and of a bulk submit keeps the same one.

Spans are made only once a tracer provider is installed (opentelemetry-sdk's, which
conveyor/telemetry.py sets up from the OTEL_* variables, or `opentelemetry-instrument`'s).
Until then every function here returns at once, and this module imports nothing of
opentelemetry: a provider is installed through `opentelemetry.trace`, so while that module
was never imported there is none. A process without the `otel` extra, or with it but
without a provider, makes no span and pays a dictionary look-up per batch of jobs.

No I/O here: a span is exported, if at all, by the provider's processors.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer, TracerProvider

    from schemas.models import SubmitRequest

TRACER_NAME = "conveyor"
SYSTEM = "conveyor"  # messaging.system

# Attributes (OpenTelemetry's messaging conventions where they fit, `conveyor.*` for the rest)
JOB_ID = "conveyor.job.id"
JOB_TYPE = "conveyor.job.type"
QUEUE = "conveyor.queue"
ATTEMPT = "conveyor.attempt"
OUTCOME = "conveyor.outcome"  # an attempt's end: succeeded, retrying, failed, cancelled, ...
JOBS = "conveyor.jobs"  # how many jobs a submit created (a flow's or a bulk's)
STEP = "conveyor.step.name"
STEP_STATE = "conveyor.step.state"  # succeeded, failed, restored, cancelled

# W3C Trace Context, version 00: https://www.w3.org/TR/trace-context/#traceparent-header
TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")
TRACESTATE = re.compile(r"[\x20-\x7e]{1,512}")  # printable, bounded: it is stored as given

_cached: tuple[TracerProvider, Tracer] | None = None


# --- the context a job keeps ----------------------------------------------------------------


def pack(carrier: Mapping[str, str]) -> str:
    """A W3C carrier (`traceparent`, `tracestate`) as the job's `trace` field; '' for none."""
    traceparent = carrier.get("traceparent", "")
    if not TRACEPARENT.fullmatch(traceparent):
        return ""
    tracestate = carrier.get("tracestate", "").strip()
    return f"{traceparent} {tracestate}" if TRACESTATE.fullmatch(tracestate) else traceparent


def unpack(trace: str) -> dict[str, str]:
    """The job's `trace` field as a W3C carrier."""
    traceparent, _, tracestate = trace.partition(" ")
    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    return carrier


def context_of(span: Span | None) -> str:
    """What a job submitted under `span` keeps ('' without a span)."""
    if span is None:
        return ""
    from opentelemetry.trace import set_span_in_context
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, set_span_in_context(span))
    return pack(carrier)


# --- whether to trace -----------------------------------------------------------------------


def tracer() -> Tracer | None:
    """Conveyor's tracer, once a tracer provider is installed in this process; else None."""
    global _cached
    api: Any = sys.modules.get("opentelemetry.trace")
    if api is None:  # never imported, so nothing installed a provider (or not importable)
        return None
    provider = api.get_tracer_provider()
    if isinstance(provider, api.ProxyTracerProvider | api.NoOpTracerProvider):
        return None
    if _cached is None or _cached[0] is not provider:
        _cached = (provider, provider.get_tracer(TRACER_NAME))
    return _cached[1]


def active() -> bool:
    """Whether spans are made: a worker then asks the store for its jobs' trace context."""
    return tracer() is not None


# --- the gateway: a submit ------------------------------------------------------------------


@dataclass
class Submit:
    """What a submit keeps with its jobs (`trace`), and its span, if one was made."""

    trace: str
    span: Span | None = None

    def created(self, requests: Iterable[SubmitRequest], job_id: str = "") -> None:
        """What the submit made: the jobs of `requests` (with their flows); for one request,
        its job `job_id` (a flow's root) and its queue."""
        if self.span is None:
            return
        requests = list(requests)
        self.span.set_attribute(JOBS, sum(request.flow_size() for request in requests))
        if job_id:
            queue = requests[0].queue or ""
            self.span.set_attributes(
                {JOB_ID: job_id, QUEUE: queue, "messaging.destination.name": queue}
            )


@contextmanager
def submitting(
    name: str, headers: Mapping[str, str], attributes: Mapping[str, str | int]
) -> Iterator[Submit]:
    """The span of a submit, current for the block; `Submit.trace` is what its jobs keep.

    An HTTP instrumentation's span current here already took the request's `traceparent`:
    the submit is its child (PRODUCER). Without one, the submit span is the request's own
    (SERVER), child of the context the request's headers carry. Without a tracer provider
    no span is made, and the jobs keep the caller's `traceparent` as it came (W3C's rule
    for a service that does not trace: pass the context on), so that workers that do trace
    still join the caller's trace."""
    tracer_ = tracer()
    if tracer_ is None:
        yield Submit(pack(headers))
        return
    from opentelemetry import propagate
    from opentelemetry.trace import SpanKind, get_current_span

    if get_current_span().get_span_context().is_valid:
        kind, parent = SpanKind.PRODUCER, None
    else:
        kind, parent = SpanKind.SERVER, propagate.extract(headers)
    with tracer_.start_as_current_span(
        name,
        context=parent,
        kind=kind,
        attributes={"messaging.system": SYSTEM, "messaging.operation.type": "send", **attributes},
    ) as span:
        yield Submit(context_of(span), span)


# --- a worker: attempts and steps -----------------------------------------------------------


def attempt(
    trace: str | None, job_id: str, job_type: str, queue: str, number: int
) -> AbstractContextManager[Span | None]:
    """The span of one attempt of a job (`run {type}`), current for the block: the child of
    the job's submit span, or a new trace's root for a job submitted without a context
    (`trace` ''). None, and nothing made, for a delivery taken without asking for its
    context (`trace` None: this worker does not trace)."""
    if trace is None:
        return nullcontext()
    tracer_ = tracer()
    if tracer_ is None:
        return nullcontext()
    from opentelemetry.context import Context
    from opentelemetry.trace import SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    # W3C's propagator, not the process's: the field is W3C whatever the OTEL_PROPAGATORS.
    # An empty Context, not the current one: the job's task may inherit another's.
    parent = TraceContextTextMapPropagator().extract(unpack(trace)) if trace else Context()
    return tracer_.start_as_current_span(
        f"run {job_type}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.destination.name": queue,
            JOB_ID: job_id,
            JOB_TYPE: job_type,
            QUEUE: queue,
            ATTEMPT: number,
        },
        # How an attempt ended is for `ended` to say: a shutdown's cancel is no error.
        record_exception=False,
        set_status_on_exception=False,
    )


def ended(span: Span | None, outcome: str, error: BaseException | None = None) -> None:
    """How the attempt of `span` ended; an `error` is recorded and marks the span failed."""
    if span is None:
        return
    span.set_attribute(OUTCOME, outcome)
    if error is not None:
        _failed(span, error)


def step(parent: Span | None, name: str) -> AbstractContextManager[Span | None]:
    """The span of a step (`step {name}`), a child of its attempt's span `parent` (given, not
    taken from the current context: a `def` handler's steps run in a thread), current for
    the block. An exception leaving the block is recorded as the step's failure, a cancel
    is not one; `restored` and `succeeded` are for the caller to mark (`step_state`)."""
    if parent is None:
        return nullcontext()
    tracer_ = tracer()
    if tracer_ is None:
        return nullcontext()
    return _step(tracer_, parent, name)


@contextmanager
def _step(tracer_: Tracer, parent: Span, name: str) -> Iterator[Span]:
    from opentelemetry.trace import SpanKind, set_span_in_context

    with tracer_.start_as_current_span(
        f"step {name}",
        context=set_span_in_context(parent),
        kind=SpanKind.INTERNAL,
        attributes={STEP: name},
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except Exception as exc:
            span.set_attribute(STEP_STATE, "failed")
            _failed(span, exc)
            raise
        except BaseException:  # a cancel (user, timeout, shutdown): nothing is recorded
            span.set_attribute(STEP_STATE, "cancelled")
            raise


def step_state(span: Span | None, state: str) -> None:
    if span is not None:
        span.set_attribute(STEP_STATE, state)


def _failed(span: Span, error: BaseException) -> None:
    from opentelemetry.trace import StatusCode

    span.record_exception(error)
    span.set_status(StatusCode.ERROR, f"{type(error).__name__}: {error}")
