"""Prometheus metrics of a consumer process (prometheus-client), served on
CONVEYOR_WORKER_METRICS_PORT when set. Queue-wide gauges (length, pending, lag, delayed,
dead-lettered) come from the gateway's /metrics, which reads them from Redis once for all."""

from __future__ import annotations

from functools import cache
from typing import Any

from prometheus_client import Counter, Histogram, start_http_server
from prometheus_client.metrics import MetricWrapperBase

JOBS = Counter(
    "conveyor_worker_jobs_total",
    "Job attempts this consumer finished, by outcome",
    ["queue", "type", "outcome"],  # outcome: started|succeeded|failed|retried|cancelled
)
DEAD_LETTERED = Counter(
    "conveyor_worker_dead_lettered_total",
    "Jobs this consumer gave up on: handler failures with no attempts left, poison entries",
    ["queue", "reason"],
)
RECLAIMED = Counter(
    "conveyor_worker_reclaimed_total",
    "Entries taken over from consumers that stopped renewing",
    ["queue"],
)
DURATION = Histogram(
    "conveyor_worker_job_duration_seconds",
    "Handler run time of one attempt",
    ["queue", "type"],
    buckets=(0.005, 0.025, 0.1, 0.5, 1, 5, 15, 60, 300, 1800, 7200),
)
PICKUP = Histogram(
    "conveyor_worker_pickup_latency_seconds",
    "From the entry's XADD (its stream id) to the job's start",
    ["queue"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
)
LOOP_LAG = Histogram(
    "conveyor_worker_loop_lag_seconds",
    "How late the event loop ran a beat due every 0.1 s: time a handler blocked it",
    buckets=(0.001, 0.005, 0.025, 0.1, 0.5, 1, 5, 30, 120),
)
LOOP_STALLS = Counter(
    "conveyor_worker_loop_stalls_total",
    "Times the event loop was blocked longer than CONVEYOR_LOOP_STALL_WARN_S",
)
UPLOAD_BYTES = Counter(
    "conveyor_worker_upload_bytes_total", "Bytes of artifacts uploaded to S3", ["queue", "type"]
)


@cache
def labelled(metric: MetricWrapperBase, *values: str) -> Any:
    """`metric.labels(*values)`, looked up once per label set: `labels()` validates, joins
    and locks (a few µs), which the job path would pay several times per job. A child is
    never removed here, so the cached one stays the one exported; the cache holds no more
    label sets than the metric itself does."""
    return metric.labels(*values)


def serve(port: int, host: str = "127.0.0.1") -> None:
    start_http_server(port, addr=host)
