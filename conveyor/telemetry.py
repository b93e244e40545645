"""Exporting spans: at the start of a gateway or worker process, install opentelemetry-sdk's
tracer provider as the standard OTEL_* variables describe, when they ask for an exporter.

    OTEL_TRACES_EXPORTER   which exporters, comma-separated, by the names their packages
                           register: `console` (in the SDK), `otlp` (opentelemetry-exporter-
                           otlp), ... Unset or `none`: nothing is installed, no span is made.
    OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER(_ARG), OTEL_BSP_*,
    OTEL_EXPORTER_OTLP_*   read by the SDK and the exporters themselves
    OTEL_SDK_DISABLED=true nothing is installed

Unlike OpenTelemetry's own auto-configuration, an unset OTEL_TRACES_EXPORTER means none
rather than `otlp`: a process with the extra installed but no collector to send to must not
log export failures. A provider installed before (`opentelemetry-instrument conveyor worker`,
or a handler module's own set-up) is left as it is. Conveyor's spans themselves are made
through the OpenTelemetry API alone (schemas/tracing.py).
"""

from __future__ import annotations

import logging
import os
from importlib.metadata import entry_points

from schemas import tracing

logger = logging.getLogger("conveyor.telemetry")

EXPORTERS_GROUP = "opentelemetry_traces_exporter"  # the entry points exporter packages register


def configure(service_name: str) -> bool:
    """Install the SDK's tracer provider with the exporters OTEL_TRACES_EXPORTER names, each
    behind a batch processor; `service_name` unless OTEL_SERVICE_NAME or
    OTEL_RESOURCE_ATTRIBUTES name the service. True when installed."""
    names = [
        name.strip()
        for name in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",")
        if name.strip() and name.strip() != "none"
    ]
    if not names or os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        logger.warning(
            "OTEL_TRACES_EXPORTER is set but opentelemetry-sdk is not installed "
            "(pip install 'conveyor[otel]'): no spans are exported"
        )
        return False
    if tracing.active():
        return False  # installed by someone else: theirs stands
    exporters = []
    for name in names:
        found = entry_points(group=EXPORTERS_GROUP, name=name)
        if found:
            exporters.append(next(iter(found)).load()())
        else:
            logger.warning(
                "OTEL_TRACES_EXPORTER names %r, which no installed package provides "
                "(for otlp: pip install opentelemetry-exporter-otlp)",
                name,
            )
    if not exporters:  # spans nobody would see are not worth making
        return False
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return True
