"""`/v1/queues` with real worker processes: a pause holds new starts while running jobs
finish and a resume releases them; the figures; the dead letters re-run; admin keys only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager

from conveyor.commands import inspect_lines, pause_command
from conveyor.gateway_app import gateway_app
from conveyor.process import ManagedProcess
from schemas import JobStatus, Settings
from tests.integration.helpers import Driver, wait_for_event, wait_for_terminal

pytestmark = pytest.mark.integration

ADMIN = {"Authorization": "Bearer admin-1"}
TENANT = {"Authorization": "Bearer key-a"}


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory(
        handlers="tests.handlers", api_keys={"key-a": "t1"}, admin_keys=["admin-1"]
    )


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = gateway_app(settings)
    transport = httpx.ASGITransport(app)
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=transport, base_url="http://gw") as http,
    ):
        yield http


async def no_start_within(driver: Driver, seconds: float) -> bool:
    """True when no job of the queue starts for `seconds` (blocking on its events stream)."""
    key = driver.producer.keys(driver.queue).events
    last = "$"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (remaining := deadline - loop.time()) > 0:
        reply = await driver.redis.xread({key: last}, block=max(1, int(remaining * 1000)))
        for _, rows in reply or ():
            for entry_id, fields in rows:
                last = entry_id
                if fields["event"] == "job.started":
                    return False
    return True


async def test_a_pause_holds_new_starts_while_running_jobs_finish(
    driver: Driver,
    spawn_worker: Callable[..., ManagedProcess],
    gateway: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    spawn_worker("w")
    running = await driver.submit("record", payload={"path": str(tmp_path / "r"), "seconds": 1})
    await wait_for_event(driver.redis, driver.queue, running, "job.started", 15)
    paused = await gateway.post(f"/v1/queues/{driver.queue}/pause", headers=ADMIN)
    assert paused.status_code == 204
    held = {await driver.submit("noop", payload={"i": i}) for i in range(5)}
    await wait_for_event(driver.redis, driver.queue, running, "job.succeeded", 15)
    assert await no_start_within(driver, 1.5)
    assert {await driver.status(job_id) for job_id in held} == {JobStatus.QUEUED}
    listed = (await gateway.get("/v1/queues", headers=ADMIN)).json()["items"]
    (info,) = [q for q in listed if q["name"] == driver.queue]
    assert info["paused"] is True and info["counts"]["queued"] == 5

    assert (
        await gateway.post(f"/v1/queues/{driver.queue}/resume", headers=ADMIN)
    ).status_code == 204
    terminal = await wait_for_terminal(driver.redis, driver.queue, held, 15)
    assert terminal.pop(running) == ["job.succeeded"]
    assert terminal == {job_id: ["job.succeeded"] for job_id in held}
    listed = (await gateway.get("/v1/queues", headers=ADMIN)).json()["items"]
    (info,) = [q for q in listed if q["name"] == driver.queue]
    assert info["paused"] is False
    assert sum(m["succeeded"] for m in info["finished_per_minute"]) == 6
    assert len(info["finished_per_minute"]) == 60


async def test_queue_actions_need_an_admin_key(driver: Driver, gateway: httpx.AsyncClient) -> None:
    q = driver.queue
    for method, path in (
        ("GET", "/v1/queues"),
        ("POST", f"/v1/queues/{q}/pause"),
        ("POST", f"/v1/queues/{q}/resume"),
        ("POST", f"/v1/queues/{q}/dead/retry"),
    ):
        assert (await gateway.request(method, path, headers=TENANT)).status_code == 403, path
        assert (await gateway.request(method, path)).status_code == 401, path
    assert not await driver.producer.paused(q)
    missing = await gateway.post("/v1/queues/nope/pause", headers=ADMIN)
    assert missing.status_code == 404


async def test_the_dead_letters_run_again(driver: Driver, gateway: httpx.AsyncClient) -> None:
    failed = await driver.job_in(JobStatus.FAILED)
    assert await driver.redis.xlen(driver.producer.keys(driver.queue).dead) == 1
    response = await gateway.post(f"/v1/queues/{driver.queue}/dead/retry", headers=ADMIN)
    assert response.status_code == 200 and response.json() == {"retried": 1, "skipped": 0}
    assert await driver.status(failed) is JobStatus.QUEUED
    assert await driver.redis.xlen(driver.producer.keys(driver.queue).dead) == 0


async def test_conveyor_pause_and_resume_from_the_command_line(
    driver: Driver, settings: Settings
) -> None:
    assert await asyncio.to_thread(pause_command, settings, driver.queue, paused=True) == 0
    assert "PAUSED" in (await inspect_lines(driver.producer, driver.queue))[0]
    assert await asyncio.to_thread(pause_command, settings, driver.queue, paused=False) == 0
    assert not await driver.producer.paused(driver.queue)


async def test_a_tenant_past_its_active_jobs_quota_gets_429_until_some_end(
    driver: Driver, settings: Settings
) -> None:
    capped = settings.model_copy(update={"tenant_max_active": 3})
    app = gateway_app(capped)
    transport = httpx.ASGITransport(app)
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=transport, base_url="http://gw") as http,
    ):

        async def submit(**body: object) -> httpx.Response:
            return await http.post("/v1/jobs", json={"type": "noop", **body}, headers=TENANT)

        first = [await submit(payload={"i": i}) for i in range(2)]
        assert [r.status_code for r in first] == [202, 202]
        flow = await submit(children=[{"type": "noop"}])  # two jobs: one too many
        assert flow.status_code == 429 and flow.headers["Retry-After"] == "5"
        assert "CONVEYOR_TENANT_MAX_ACTIVE" in flow.json()["message"]
        assert (await submit()).status_code == 202  # the third
        assert (await submit()).status_code == 429
        bulk = await http.post("/v1/jobs/bulk", json={"jobs": [{"type": "noop"}]}, headers=TENANT)
        assert [item["status"] for item in bulk.json()["results"]] == [429]

        # One ends: one more fits.
        await driver.producer.cancel(driver.queue, first[0].json()["id"])
        assert (await submit()).status_code == 202
        assert await driver.producer.tenant_active([driver.queue], "t1") == 3


async def test_a_shared_limit_spaces_calls_across_three_workers(
    driver: Driver, spawn_worker: Callable[..., ManagedProcess], tmp_path: Path
) -> None:
    """`ctx.limit("upstream", "20/s")` from async and def handlers on three workers for about
    five seconds: no one-second window holds more than 20 calls, and 100 calls take within
    10% of the 4.95 s the rate allows."""
    path = tmp_path / "calls"
    jobs = {
        await driver.submit(
            "limited" if i % 2 else "limited_def", payload={"path": str(path), "calls": 10}
        )
        for i in range(10)
    }
    for i in range(3):
        spawn_worker(f"w{i}")
    terminal = await wait_for_terminal(driver.redis, driver.queue, jobs, 60)
    assert terminal == {job_id: ["job.succeeded"] for job_id in jobs}
    starts = sorted(float(line) for line in path.read_text().split())
    assert len(starts) == 100
    assert all(starts[i + 20] - starts[i] >= 1000 for i in range(len(starts) - 20))
    span_ms = starts[-1] - starts[0]
    assert 0.9 * 4950 <= span_ms <= 1.1 * 4950, span_ms
