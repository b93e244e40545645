"""Callbacks: when a job with a `callback_url` ends, its snapshot is POSTed there, signed as
the Standard Webhooks spec says (https://www.standardwebhooks.com), so a serverless backend
hears of the end without polling (the seeds relied on QStash callbacks for this).

The script that ends the job queues the delivery in the queue's callbacks stream
(`conveyor:{q}:callbacks`, `job_ended` in producer/scripts/includes/common.lua), in the same
step as the end: nothing ends without its callback queued, and a slow or failing receiver
never delays or changes the job's own terminal state. Workers read the stream in the group
`callbacks`; a delivery that fails is tried again after about a second, then doubling, for
up to `CONVEYOR_CALLBACK_RETRY_S` after the job ended (the due set holds the next tries). A
worker that dies mid-delivery leaves the entry pending for another; a receiver may so see a
delivery twice, with the same `webhook-id`, which the spec tells receivers to deduplicate on.
Where it stands is in the snapshot: `callback` {status, attempts, last_error}.

The URL is the tenant's choice, so it goes through the same guard as `ingest_url`: no
loopback, private, link-local or metadata addresses unless `CONVEYOR_INGEST_ALLOWED_HOSTS`
says so, no redirects.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import time
from typing import TYPE_CHECKING

import httpx

from consumers.handlers.ingest import GuardedTransport
from consumers.periodic import pause
from schemas.keys import CALLBACKS_GROUP
from schemas.models import Job

if TYPE_CHECKING:
    from consumers.worker import ConveyorWorker

logger = logging.getLogger("conveyor.worker")

BATCH = 16  # deliveries a worker makes at once
MAX_BACKOFF_S = 3600.0
MAX_ERROR_CHARS = 500


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256>` of `{id}.{timestamp}.{body}` under the secret's bytes (the
    base64 after `whsec_`): the spec's `webhook-signature`."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


class Callbacks:
    """One worker's share of its queue's callback deliveries."""

    def __init__(self, worker: ConveyorWorker) -> None:
        self.worker = worker
        self.producer = worker.producer
        self.settings = worker.settings
        self.queue = worker.queue

    async def run(self) -> None:
        w = self.worker
        await self.producer.ensure_group(self.queue, CALLBACKS_GROUP)
        timeout = httpx.Timeout(self.settings.callback_timeout_s)
        transport = GuardedTransport(self.settings.ingest_allowed_hosts)
        async with httpx.AsyncClient(
            transport=transport, timeout=timeout, follow_redirects=False, trust_env=False
        ) as http:
            while not w.stopping.is_set():
                try:
                    await self.deliver_some(http)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("callback deliveries failed; retrying in 1s")
                    await pause(w.stopping, 1.0)

    async def deliver_some(self, http: httpx.AsyncClient) -> None:
        """Requeue the retries that came due, then deliver what the stream holds (waiting
        for an entry until the next retry is due, at most a block)."""
        next_due = await self.producer.callbacks_due(self.queue)
        block_ms = self.settings.block_ms
        if next_due is not None:
            block_ms = max(1, min(block_ms, next_due - int(time.time() * 1000)))
        rows = await self.producer.group_rows(
            self.producer.keys(self.queue).callbacks,
            CALLBACKS_GROUP,
            self.worker.consumer,
            BATCH,
            block_ms,
            int(self.settings.visibility_timeout_s * 1000),
        )
        job_ids = [fields["job_id"] for _, fields in rows if fields.get("job_id")]
        await asyncio.gather(*(self.deliver(http, job_id) for job_id in job_ids))
        if rows:
            await self.producer.ack_callbacks(self.queue, [entry_id for entry_id, _ in rows])

    async def deliver(self, http: httpx.AsyncClient, job_id: str) -> None:
        job = await self.producer.get(self.queue, job_id)
        if job is None or job.callback is None or job.callback.status != "pending":
            return  # expired, or delivered (a repeated entry), or given up
        attempts = job.callback.attempts + 1
        try:
            error = await self._post(http, job)
        except Exception as exc:  # never let one receiver stop the others' deliveries
            error = f"{type(exc).__name__}: {exc}"
        if error is None:
            await self.producer.record_callback(self.queue, job_id, "delivered", attempts)
            logger.info("callback delivered", extra={"job_id": job_id, "attempts": attempts})
            return
        error = error[:MAX_ERROR_CHARS]
        delay_s = min(MAX_BACKOFF_S, self.settings.callback_backoff_base_s * 2 ** (attempts - 1))
        ended_s = (job.finished_at or job.updated_at) / 1000
        if time.time() + delay_s - ended_s > self.settings.callback_retry_s:
            await self.producer.record_callback(self.queue, job_id, "failed", attempts, error)
            logger.warning("callback failed for good: %s", error, extra={"job_id": job_id})
            return
        retry_at_ms = int((time.time() + delay_s) * 1000)
        await self.producer.record_callback(
            self.queue, job_id, "pending", attempts, error, retry_at_ms
        )
        logger.info(
            "callback failed (%s); again in %.1fs", error, delay_s, extra={"job_id": job_id}
        )

    async def _post(self, http: httpx.AsyncClient, job: Job) -> str | None:
        """POST the snapshot; None when the receiver took it (2xx), else what went wrong."""
        assert job.callback is not None
        secret = self.settings.webhook_secrets.get(job.tenant)
        if secret is None:
            return f"no webhook secret for tenant {job.tenant!r} (CONVEYOR_WEBHOOK_SECRETS)"
        body = job.model_dump_json(exclude={"callback"}).encode()
        # The same message keeps its id over retries: a receiver deduplicates on it.
        message_id = f"msg_{job.id}_{job.last_event_id}"
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": "conveyor-callbacks/1",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(secret, message_id, timestamp, body),
        }
        response = await http.post(job.callback.url, content=body, headers=headers)
        if response.is_success:
            return None
        return f"HTTP {response.status_code} {response.reason_phrase}"
