"""Prometheus metrics of one gateway app, in a registry of its own (so apps never collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.submits = Counter(
            "conveyor_gateway_submits", "Jobs accepted by POST /v1/jobs", ["type"], registry=r
        )
        self.sse_connections = Gauge(
            "conveyor_gateway_sse_connections", "Open SSE responses", ["stream"], registry=r
        )
        self.sse_live_path = Counter(
            "conveyor_gateway_sse_live_path",
            "SSE responses by how the hub writes their live frames: 'transport' (straight into "
            "the connection) or 'asgi' (through ASGI send, where the server is not verified)",
            ["path"],
            registry=r,
        )
        self.hub_events = Counter(
            "conveyor_gateway_hub_events", "Events the hub read from Redis", registry=r
        )
        self.hub_lag = Gauge(
            "conveyor_gateway_hub_lag_seconds",
            "Age of the last event the hub dispatched, at dispatch time",
            registry=r,
        )
        self.hub_dispatch = Histogram(
            "conveyor_gateway_hub_dispatch_seconds",
            "Time to hand one batch of events to every subscriber",
            registry=r,
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0),
        )
        self.hub_drops = Counter(
            "conveyor_gateway_hub_dropped_subscribers",
            "Subscribers disconnected because their buffer was full",
            registry=r,
        )
        self.hub_refills = Counter(
            "conveyor_gateway_hub_refills",
            "Times the hub fell behind the events stream cap and refilled from job streams",
            registry=r,
        )
        self.hub_errors = Counter(
            "conveyor_gateway_hub_reader_errors", "Redis errors seen by the hub reader", registry=r
        )
        self.hub_undeliverable = Counter(
            "conveyor_gateway_hub_undeliverable_events",
            "Events the hub skipped because they could not be read or encoded",
            registry=r,
        )
        self.redis_up = Gauge(
            "conveyor_gateway_redis_up", "1 when Redis answered the last scrape", registry=r
        )
        self.queue_length = Gauge(
            "conveyor_queue_length", "Entries in the jobs stream", ["queue"], registry=r
        )
        self.queue_pending = Gauge(
            "conveyor_queue_pending",
            "Entries delivered but not acknowledged",
            ["queue"],
            registry=r,
        )
        self.queue_lag = Gauge(
            "conveyor_queue_lag", "Entries not yet delivered to any consumer", ["queue"], registry=r
        )
        self.queue_delayed = Gauge(
            "conveyor_queue_delayed", "Jobs scheduled for later", ["queue"], registry=r
        )
        self.queue_dead = Gauge(
            "conveyor_queue_dead", "Entries in the dead-letter stream", ["queue"], registry=r
        )
        self.consumers_alive = Gauge(
            "conveyor_consumers_alive",
            "Consumers that marked themselves seen within the last 3 heartbeats (15 s)",
            ["queue"],
            registry=r,
        )
