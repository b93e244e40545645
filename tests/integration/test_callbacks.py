"""Callbacks on real worker processes and a real local receiver, which checks every signature
with an independent Standard Webhooks implementation (the `standardwebhooks` package) and
refuses the first deliveries: each job's receiver sees exactly one accepted delivery."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from standardwebhooks.webhooks import Webhook

from conveyor.gateway_app import gateway_app
from conveyor.process import ManagedProcess
from schemas import JobStatus, Settings
from tests.integration.helpers import Driver, until, wait_for_terminal

pytestmark = pytest.mark.integration

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


class Receiver(ThreadingHTTPServer):
    """POST /hook: refuses the first `refuse` deliveries of each message (500), verifies
    every signature, records what it accepted."""

    daemon_threads = True

    def __init__(self, refuse: int) -> None:
        super().__init__(("127.0.0.1", 0), _Hook)
        self.refuse = refuse
        self.tries: Counter[str] = Counter()  # by webhook-id
        self.accepted: list[dict[str, Any]] = []  # verified, answered 2xx
        self.forged = 0
        self.first_arrival: dict[str, float] = {}  # by job id
        self.changed = threading.Condition()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"

    def wait_for(self, accepted: int, timeout_s: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: len(self.accepted) >= accepted, timeout_s)


class _Hook(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        receiver = self.server
        try:
            job = Webhook(SECRET).verify(body, dict(self.headers.items()))
        except Exception:
            with receiver.changed:
                receiver.forged += 1
            self.send_response(400)
            self.end_headers()
            return
        with receiver.changed:
            receiver.first_arrival.setdefault(job["id"], time.time())
            message = self.headers["webhook-id"]
            receiver.tries[message] += 1
            refused = receiver.tries[message] <= receiver.refuse
            if not refused:
                receiver.accepted.append(job)
            receiver.changed.notify_all()
        self.send_response(500 if refused else 204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(refuse=2)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


CALLBACK_ENV = {
    "CONVEYOR_WEBHOOK_SECRETS": f"t1={SECRET}",
    "CONVEYOR_INGEST_ALLOWED_HOSTS": "127.0.0.1",
    "CONVEYOR_CALLBACK_BACKOFF_BASE_S": "0.1",
}


async def test_each_job_is_delivered_once_signed_after_two_refusals(
    driver: Driver, spawn_worker: Callable[..., ManagedProcess], receiver: Receiver
) -> None:
    jobs = {
        await driver.submit("noop", payload={"n": i}, callback_url=receiver.url): "succeeded"
        for i in range(3)
    }
    jobs[await driver.submit("permanent", callback_url=receiver.url)] = "failed"
    spawn_worker("w", **CALLBACK_ENV)
    assert await asyncio.to_thread(receiver.wait_for, len(jobs), 30)
    terminal = await wait_for_terminal(driver.redis, driver.queue, set(jobs), 10)
    assert terminal == {job_id: [f"job.{status}"] for job_id, status in jobs.items()}

    assert receiver.forged == 0
    assert Counter(body["id"] for body in receiver.accepted) == {job_id: 1 for job_id in jobs}
    assert {body["id"]: body["status"] for body in receiver.accepted} == jobs
    assert all(tries == 3 for tries in receiver.tries.values())  # two refused, one taken
    keys = driver.producer.keys(driver.queue)

    async def all_recorded() -> bool:  # the receiver answered; the worker then writes it
        states = await driver.producer.get_many([(driver.queue, job_id) for job_id in jobs])
        delivered = all(j and j.callback and j.callback.status == "delivered" for j in states)
        return delivered and await driver.redis.xlen(keys.callbacks) == 0

    await until(
        all_recorded, redis=driver.redis, stream=keys.callbacks, timeout_s=10, what="records"
    )
    for job_id in jobs:
        job = await driver.producer.get(driver.queue, job_id)
        assert job is not None and job.callback is not None
        assert (job.callback.status, job.callback.attempts) == ("delivered", 3)
        # The job ended before its first delivery was tried: a receiver never holds it up.
        arrived = receiver.first_arrival[job_id]
        assert job.finished_at is not None and job.finished_at / 1000 <= arrived
        assert job.status.value == jobs[job_id]
    assert await driver.redis.zcard(keys.callbacks_due) == 0  # no retry left due


async def test_a_guarded_or_failing_receiver_is_given_up_on_within_the_retry_window(
    driver: Driver, spawn_worker: Callable[..., ManagedProcess], receiver: Receiver
) -> None:
    job_id = await driver.submit("noop", callback_url=receiver.url)
    # No CONVEYOR_INGEST_ALLOWED_HOSTS: a loopback receiver is refused, as a private or
    # metadata address would be; tried again for a second, then given up on.
    spawn_worker(
        "w",
        CONVEYOR_WEBHOOK_SECRETS=f"t1={SECRET}",
        CONVEYOR_CALLBACK_BACKOFF_BASE_S="0.1",
        CONVEYOR_CALLBACK_RETRY_S="1",
    )
    await wait_for_terminal(driver.redis, driver.queue, {job_id}, 15)
    deadline = time.monotonic() + 15
    while True:  # the callback's end writes no event (the job's history ended): re-read
        job = await driver.producer.get(driver.queue, job_id)
        assert job is not None and job.callback is not None
        if job.callback.status == "failed" or time.monotonic() > deadline:
            break
        await driver.redis.xread({driver.producer.keys(driver.queue).callbacks: "$"}, block=200)
    assert job.callback.status == "failed", job.callback
    assert job.callback.attempts >= 2 and "refusing" in (job.callback.last_error or "")
    assert receiver.tries == Counter()  # nothing ever reached it
    assert job.status is JobStatus.SUCCEEDED  # the job's own end is untouched


async def test_a_callback_without_a_tenant_secret_is_422_and_nothing_is_queued(
    settings_factory: Callable[..., Settings], driver: Driver
) -> None:
    settings = settings_factory(
        api_keys={"key-a": "acme", "key-b": "globex"}, webhook_secrets={"acme": SECRET}
    )
    app = gateway_app(settings)
    transport = httpx.ASGITransport(app)
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=transport, base_url="http://gw") as http,
    ):
        body = {"type": "noop", "callback_url": "https://example.com/hook"}
        refused = await http.post("/v1/jobs", json=body, headers={"Authorization": "Bearer key-b"})
        assert refused.status_code == 422
        assert "callback_url" in refused.json()["message"]
        assert await driver.redis.exists(driver.producer.keys(driver.queue).jobs) == 0
        taken = await http.post("/v1/jobs", json=body, headers={"Authorization": "Bearer key-a"})
        assert taken.status_code == 202
        callback = taken.json()["callback"]
        assert callback == {
            "url": "https://example.com/hook",
            "status": "waiting",
            "attempts": 0,
            "last_error": None,
        }
    assert json.loads(json.dumps(callback))  # plain JSON
