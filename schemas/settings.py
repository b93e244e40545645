"""Settings: one `BaseSettings`, read from `CONVEYOR_*` environment variables and `.env`."""

from __future__ import annotations

import base64
import binascii
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from schemas.keys import TENANT_NAME

API_KEY = re.compile(r"^[\x21-\x2b\x2d-\x7e]{1,256}$")  # visible ASCII but ','


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    # Errors name the setting and what is wrong, never echo its value: many are secrets.
    model_config = SettingsConfigDict(
        env_prefix="CONVEYOR_", env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    # Where things are. Unset endpoints mean `conveyor run` starts embedded servers.
    redis_url: str | None = None
    s3_endpoint: str | None = None
    s3_access_key: str = "conveyor"
    s3_secret_key: str = "conveyor-secret"
    s3_bucket: str = "conveyor"
    s3_secure: bool = False
    s3_region: str = "us-east-1"
    data_dir: Path = Path("./.conveyor")
    key_prefix: str = "conveyor"
    queues: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["default"])
    # The worker settings (arq style: `functions`, `on_startup`, ...) that declare the job
    # types. Workers run them; the gateway reads the type names from it to refuse unknown ones.
    handlers: str = "consumers.handlers:WorkerSettings"

    # Logs: JSON lines (for collectors) or text (for a person); `auto` is text when stderr
    # is a terminal, JSON otherwise. The level of every process.
    log_format: Literal["auto", "json", "text"] = "auto"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "debug", "info", "warning", "error"] = (
        "INFO"
    )
    # The gateway logs a line per request (uvicorn's access log, at INFO); off saves a
    # submit a record's cost where a proxy in front logs requests already.
    access_log: bool = True
    # Consumers serve Prometheus metrics on this port when set (0 or unset: off).
    worker_metrics_port: int | None = None

    # Clients: the gateway `conveyor submit` and `get`, `cancel`, `retry`, `list` and `tail`
    # talk to (e.g. http://127.0.0.1:8000), and the API key they present there.
    url: str | None = None
    api_key: str | None = None

    # Gateway.
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    token_secret: str | None = None
    # /metrics is open by default (scrapers on a private network); set a key to require
    # `Authorization: Bearer <metrics_key>` there.
    metrics_key: str | None = None
    event_token_ttl_s: int = 3600
    max_payload_bytes: int = 256 * 1024
    # `POST /v1/jobs/bulk` carries up to 1,000 submit bodies.
    max_bulk_bytes: int = 16 * 1024 * 1024
    redis_timeout_s: float = 2.0
    sse_ping_s: float = 15.0
    sse_retry_ms: int = 5000
    # Events held for an SSE response while it reads its snapshot or replay from Redis.
    sse_subscriber_buffer: int = 1000
    # Kernel send buffer of each gateway connection (`conveyor gateway`): what an SSE client
    # that stopped reading may hold before it is dropped, besides uvicorn's 64 KiB.
    sse_send_buffer_bytes: int = 128 * 1024
    # Per job, at most one job.progress event per this interval goes to clients (coalesced).
    sse_progress_interval_s: float = 0.2
    presign_ttl_s: int = 300
    # Request line and headers of one request, at most (more is answered 431): what a client
    # can make the gateway buffer before the request reaches the app.
    max_header_bytes: int = 64 * 1024
    # A connection whose request headers are not complete this long after they began is
    # closed: slow-drip clients (slowloris) cannot hold connections and file descriptors.
    header_timeout_s: float = 10.0
    # Likewise for a request body still arriving this long after its headers (the app's own
    # time and responses, SSE included, are not counted).
    body_timeout_s: float = 30.0

    # `conveyor run`.
    consumers: int = 2

    # Consumers: defaults from what the best queues ship (see README, "Defaults").
    concurrency: int = 16
    visibility_timeout_s: float = 30.0
    reclaim_interval_s: float = 5.0
    max_deliveries: int = 3
    max_attempts: int = 5
    backoff_base_s: float = 2.0
    backoff_max_s: float = 600.0
    job_timeout_s: float = 300.0
    shutdown_grace_s: float = 25.0
    block_ms: int = 1000
    progress_interval_s: float = 0.25
    # Heavy handlers. Plain `def` handlers run on a pool of this many threads per worker.
    handler_threads: int = Field(default=8, ge=1, le=256)
    # A lease is renewed from a thread of the worker's own, so a blocked event loop keeps
    # it; but not past the job's timeout plus this grace, so a hung handler is reclaimed.
    lease_grace_s: float = 10.0
    # An event loop blocked this long is logged with the job and the blocking stack.
    loop_stall_warn_s: float = 1.0
    consumer_idle_cleanup_s: float = 3600.0
    # Flows: a waiting parent's children are first checked to exist this long after it was
    # created, then hourly. A submit cut short (a gateway killed between creating a parent
    # and its children) leaves children that never will; they count as cancelled, so no
    # parent waits forever.
    flow_check_s: float = Field(default=60.0, gt=0)

    # Retention.
    events_maxlen: int = 100_000
    job_events_maxlen: int = 10_000
    job_retention_s: int = 7 * 24 * 3600
    idempotency_ttl_s: int = 600

    # Storage and ingest.
    s3_part_size: int = 8 * 1024 * 1024
    # Parts uploading while the next one fills: memory is (this + 1) parts. 1 holds two parts
    # but streams at ~0.6x a direct put; 2 reaches ~0.8-0.9x (bench.ingest).
    s3_parallel_parts: int = Field(default=2, ge=1, le=8)
    # Host clients use for presigned artifact URLs when it differs from s3_endpoint (e.g. the
    # docker-compose service name `minio:9000` is not reachable from a browser).
    s3_public_endpoint: str | None = None
    ingest_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    ingest_max_bytes: int = 5 * 1024 * 1024 * 1024
    ingest_connect_timeout_s: float = 10.0
    ingest_read_timeout_s: float = 60.0

    # Callbacks (`callback_url`): Standard Webhooks signatures with each tenant's secret
    # (`tenant=whsec_<base64>` pairs), retried with backoff for this long after the job ended.
    webhook_secrets: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    # Keys for queue-wide actions (`/v1/queues`: statistics, pause, resume, dead-letter
    # retry), used as `Authorization: Bearer <key>`; a tenant's key gets 403 there.
    admin_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # A tenant's unfinished jobs (all queues) past which a submit is 429 with Retry-After.
    tenant_max_active: int | None = Field(default=None, ge=1)
    tenant_quota_retry_after_s: int = Field(default=5, ge=1)
    callback_retry_s: float = Field(default=24 * 3600, ge=0)
    callback_timeout_s: float = Field(default=10.0, gt=0)
    callback_backoff_base_s: float = Field(default=1.0, gt=0)
    # Schedules: how fast their clock runs. For tests only (60: a cron minute a second).
    schedule_clock_scale: float = Field(default=1.0, ge=1, le=3600)

    @field_validator("queues", "ingest_allowed_hosts", "admin_keys", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _key_tenant_pairs(cls, value: object) -> object:
        """`key=tenant,key=tenant`, split at each item's last `=`: a key may end in base64
        padding (`c2VjcmV0==acme` is key `c2VjcmV0=`), a tenant name holds no `=`. A key
        given twice is refused rather than silently taking its last tenant."""
        if not isinstance(value, str):
            return value
        pairs: dict[str, str] = {}
        for item in value.split(","):
            if not item.strip():
                continue
            key, sep, tenant = item.strip().rpartition("=")
            if not sep or not key.strip() or not tenant.strip():
                raise ValueError(f"CONVEYOR_API_KEYS entry {item.strip()!r} is not key=tenant")
            key, tenant = key.strip(), tenant.strip()
            if key in pairs:
                raise ValueError(
                    f"CONVEYOR_API_KEYS names key {_redacted(key)} twice "
                    f"(tenants {pairs[key]!r} and {tenant!r}): each key belongs to one tenant"
                )
            pairs[key] = tenant
        return pairs

    @field_validator("webhook_secrets", mode="before")
    @classmethod
    def _tenant_secret_pairs(cls, value: object) -> object:
        """`tenant=whsec_...,tenant=whsec_...`, split at each item's first `=` (a secret's
        base64 may end in `=`)."""
        if not isinstance(value, str):
            return value
        pairs: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in value.split(","))):
            tenant, sep, secret = item.partition("=")
            if not sep or not tenant.strip() or not secret.strip():
                raise ValueError("CONVEYOR_WEBHOOK_SECRETS entries are tenant=whsec_<base64>")
            pairs[tenant.strip()] = secret.strip()
        return pairs

    @field_validator("webhook_secrets")
    @classmethod
    def _secrets_as_the_spec_writes_them(cls, value: dict[str, str]) -> dict[str, str]:
        for tenant, secret in value.items():
            body = secret.removeprefix("whsec_")
            try:
                ok = (
                    secret.startswith("whsec_") and len(base64.b64decode(body, validate=True)) >= 16
                )
            except binascii.Error:
                ok = False
            if not ok:
                raise ValueError(
                    f"CONVEYOR_WEBHOOK_SECRETS: the secret of tenant {tenant!r} must be whsec_ "
                    "followed by the base64 of at least 16 random bytes"
                )
        return value

    @field_validator("api_keys")
    @classmethod
    def _usable_keys_and_tenants(cls, value: dict[str, str]) -> dict[str, str]:
        for key, tenant in value.items():
            if not API_KEY.fullmatch(key):
                raise ValueError(
                    f"CONVEYOR_API_KEYS: key {_redacted(key)} must be 1-256 visible ASCII "
                    "characters without ',' (what a Bearer header can carry)"
                )
            if not TENANT_NAME.fullmatch(tenant):
                raise ValueError(
                    f"CONVEYOR_API_KEYS: tenant {tenant!r} must be 1-64 of A-Z a-z 0-9 _ . @ -, "
                    "starting with a letter or digit (tenant names are part of Redis keys)"
                )
        return value

    @property
    def lease_renew_interval_s(self) -> float:
        return self.visibility_timeout_s / 3


def _redacted(key: str) -> str:
    """Enough of a key to find it in a config file, not enough to use it."""
    return repr(key[:4] + "…") if len(key) > 6 else "(a short key)"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
