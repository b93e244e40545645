"""Schedules on real worker processes: each tick submits exactly one job however many
workers run, and downtime gives at most one catch-up run. arq `cron_jobs` tick every
second here; an API schedule's `* * * * *` runs on a clock sped up 60 times."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from conveyor.commands import inspect_lines
from conveyor.gateway_app import gateway_app
from conveyor.process import ManagedProcess
from schemas import Settings
from tests.integration.helpers import Driver, until

pytestmark = pytest.mark.integration

A = {"Authorization": "Bearer key-a"}


async def ticks_submitted(driver: Driver, tenant: str, name: str) -> dict[int, str]:
    """Tick (ms) -> the job submitted for it, from the idempotency keys the ticks made."""
    prefix = driver.producer.keys(driver.queue).idempotency(tenant, f"schedule:{name}:")
    found = {}
    async for key in driver.redis.scan_iter(match=f"{prefix}*", count=1000):
        found[int(key.rsplit(":", 1)[1])] = await driver.redis.get(key)
    return found


async def jobs_of(driver: Driver, tenant: str, job_type: str) -> list[str]:
    page = await driver.producer.list_jobs([driver.queue], tenant, limit=100, job_type=job_type)
    return [job.id for job in page.jobs]


async def test_an_arq_cron_job_ticks_once_per_second_across_three_workers(
    driver: Driver, spawn_worker: Callable[..., ManagedProcess]
) -> None:
    for i in range(3):
        spawn_worker(f"w{i}", CONVEYOR_HANDLERS="tests.schedule_handlers")
    events = driver.producer.keys(driver.queue).events

    async def four_ticks() -> bool:
        return len(await ticks_submitted(driver, "", "beat")) >= 4

    await until(four_ticks, redis=driver.redis, stream=events, timeout_s=20, what="4 ticks")
    ticks = await ticks_submitted(driver, "", "beat")
    jobs = set(await jobs_of(driver, "", "beat"))
    assert set(ticks.values()) <= jobs and len(set(ticks.values())) == len(ticks)
    assert len(jobs) in (len(ticks), len(ticks) + 1)  # one more may land between the reads
    ordered = sorted(ticks)
    assert all(b - a == 1000 for a, b in itertools.pairwise(ordered))  # no gap
    schedules = await driver.producer.schedules(driver.queue)
    assert [(s.name, s.origin, s.type) for s in schedules] == [("beat", "worker", "beat")]


@pytest.fixture
async def gateway(settings_factory: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    settings = settings_factory(api_keys={"key-a": "acme", "key-b": "globex"})
    app = gateway_app(settings)
    transport = httpx.ASGITransport(app)
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=transport, base_url="http://gw") as http,
    ):
        yield http


async def test_an_api_schedule_ticks_once_per_minute_and_catches_up_once(
    driver: Driver, spawn_worker: Callable[..., ManagedProcess], gateway: httpx.AsyncClient
) -> None:
    body = {"name": "digest", "cron": "* * * * *", "type": "noop", "payload": {"n": 1}}
    created = await gateway.post("/v1/schedules", json=body, headers=A)
    assert created.status_code == 201, created.text
    assert created.json()["next_run_at"] % 60_000 == 0
    fast = {"CONVEYOR_SCHEDULE_CLOCK_SCALE": "60"}  # a cron minute each second
    workers = [spawn_worker(f"w{i}", **fast) for i in range(3)]
    events = driver.producer.keys(driver.queue).events

    async def ticks(n: int) -> bool:
        return len(await ticks_submitted(driver, "acme", "digest")) >= n

    await until(lambda: ticks(3), redis=driver.redis, stream=events, timeout_s=20, what="3 ticks")
    for worker in workers:
        worker.stop(grace_s=5)
    before = await ticks_submitted(driver, "acme", "digest")
    ordered = sorted(before)
    assert all(b - a == 60_000 for a, b in itertools.pairwise(ordered))
    assert len(set(before.values())) == len(before) == len(await jobs_of(driver, "acme", "noop"))

    # The gap is what is tested: four cron minutes (four real seconds) with no worker.
    await asyncio.sleep(4)
    spawn_worker("again", **fast)
    await until(
        lambda: ticks(len(before) + 1),
        redis=driver.redis,
        stream=events,
        timeout_s=20,
        what="the catch-up",
    )
    after = await ticks_submitted(driver, "acme", "digest")
    catch_up = min(set(after) - set(before))
    missed = (catch_up - max(before)) // 60_000
    assert missed >= 4  # it is the latest missed tick: the three or more before it never ran
    listed = (await gateway.get("/v1/schedules", headers=A)).json()["items"]
    assert [(s["name"], s["last_run_at"] is not None) for s in listed] == [("digest", True)]


async def test_schedules_belong_to_their_tenant_and_bad_ones_are_422(
    gateway: httpx.AsyncClient,
) -> None:
    body: dict[str, Any] = {"name": "nightly", "cron": "0 3 * * *", "type": "noop"}
    assert (await gateway.post("/v1/schedules", json=body, headers=A)).status_code == 201
    again = await gateway.post("/v1/schedules", json={**body, "cron": "0 4 * * *"}, headers=A)
    assert again.status_code == 200 and again.json()["cron"] == "0 4 * * *"
    other = {"Authorization": "Bearer key-b"}
    assert (await gateway.get("/v1/schedules", headers=other)).json()["items"] == []
    assert (await gateway.delete("/v1/schedules/nightly", headers=other)).status_code == 404
    for bad, field in (
        ({**body, "cron": "61 * * * *"}, "cron"),
        ({**body, "cron": "* * *"}, "cron"),
        ({**body, "timezone": "Mars/Olympus"}, "timezone"),
        ({**body, "type": "nope"}, "type"),
        ({**body, "type": "sleep", "payload": {"secs": 1}}, "payload"),
    ):
        response = await gateway.post("/v1/schedules", json=bad, headers=A)
        assert response.status_code == 422 and field in response.json()["message"], bad
    assert (await gateway.delete("/v1/schedules/nightly", headers=A)).status_code == 204
    assert (await gateway.get("/v1/schedules", headers=A)).json()["items"] == []


async def test_inspect_shows_each_schedule_and_its_next_run(
    driver: Driver, gateway: httpx.AsyncClient
) -> None:
    body = {"name": "hourly", "cron": "0 * * * *", "type": "noop", "timezone": "Europe/Paris"}
    assert (await gateway.post("/v1/schedules", json=body, headers=A)).status_code == 201
    lines = await inspect_lines(driver.producer, driver.queue)
    (line,) = [line for line in lines if "acme/hourly" in line]
    assert "noop" in line and "0 * * * *" in line and "Europe/Paris" in line
