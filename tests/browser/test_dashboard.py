"""The dashboard in a real browser: headless Chromium (Debian's `chromium`, driven by
Playwright) against a real gateway process, a real consumer process and a real Redis.

Playwright cannot download its own browser here, so it launches the system one by path;
`make test` installs it when missing. Every wait is on a DOM condition with a deadline.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from conveyor.embedded_redis import EmbeddedRedis
from conveyor.process import ManagedProcess, free_port
from tests.browser.conftest import FAILED
from tests.fixtures.processes import conveyor_env, start_gateway, start_worker

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CONVEYOR_CHROMIUM", "/usr/bin/chromium")
# What runs as root in a container without a GPU or outside network. Playwright gives each
# launch a fresh temporary profile (--user-data-dir) of its own.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
API_KEY = "k"
DEADLINE_MS = 15_000
SCREENSHOT = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard.png"
PROCESSES: list[ManagedProcess] = []  # this module's servers, whose logs a failure prints

# Records each new value of the sleep job's progress bar as the page changes it, so the
# test sees the bar move even between two of its own looks at the DOM.
RECORD_PROGRESS = """() => {
  window.progressSeen = [];
  const record = () => {
    const bar = document.querySelector('tr[data-type="sleep"] progress');
    const seen = window.progressSeen;
    if (bar && seen[seen.length - 1] !== bar.value) seen.push(bar.value);
  };
  new MutationObserver(record).observe(document.querySelector("#jobs tbody"), {
    subtree: true, childList: true, attributes: true, attributeFilter: ["value"],
  });
}"""


@pytest.fixture(scope="module")
def dashboard_url(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A gateway and one consumer on this module's own queue; stopped by pid afterwards."""
    queue_name = f"browser-{uuid.uuid4().hex[:8]}"
    tmp_path = tmp_path_factory.mktemp("dashboard")
    port = free_port()
    env = conveyor_env(
        CONVEYOR_REDIS_URL=redis_server.url,
        CONVEYOR_API_KEYS=f"{API_KEY}=t1",
        CONVEYOR_QUEUES=queue_name,
    )
    worker = start_worker(env, queue=queue_name, log_dir=tmp_path)  # boots while we wait
    PROCESSES[:] = [worker]
    try:
        PROCESSES.insert(0, start_gateway(env, port=port, log_dir=tmp_path))
        yield f"http://127.0.0.1:{port}"
        assert worker.alive(), worker.log_tail()
    finally:
        for process in reversed(PROCESSES):
            process.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} not found: `make test` installs Debian's chromium package")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh browser context (empty localStorage) whose page must log no error. When the
    test fails, the page as it was is kept in test-artifacts/ beside the servers' logs."""
    context = browser.new_context(viewport={"width": 1280, "height": 640})
    context.set_default_timeout(DEADLINE_MS)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))

    def on_console(message: ConsoleMessage) -> None:
        if message.type in {"error", "warning"}:
            problems.append(f"console {message.type}: {message.text}")

    page.on("console", on_console)
    page.on(
        "response",
        lambda r: problems.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None,
    )
    try:
        yield page
        if request.node.stash.get(FAILED, False):
            name = request.node.name
            page.screenshot(path=SCREENSHOT.with_name(f"failed-{name}.png"), full_page=True)
            for process in PROCESSES:
                print(f"--- {process.name} log ---\n{process.log_tail(60)}")
    finally:
        context.close()
    assert not problems, problems


def connect(page: Page, dashboard_url: str) -> None:
    page.goto(f"{dashboard_url}/")
    page.get_by_label("API key").fill(API_KEY)
    page.get_by_role("button", name="Connect").click()
    expect(page.locator("#connection")).to_have_text("Live")


def submit(page: Page, job_type: str, payload: dict[str, object]) -> None:
    page.get_by_label("Job type").select_option(job_type)
    page.get_by_label("Payload (JSON)").fill(json.dumps(payload))
    page.get_by_role("button", name="Submit").click()
    expect(page.locator("#submit-status")).to_contain_text(f"Submitted {job_type} job")


def test_a_job_submitted_from_the_page_is_watched_to_the_end(
    dashboard_url: str, page: Page
) -> None:
    connect(page, dashboard_url)
    page.evaluate(RECORD_PROGRESS)
    submit(page, "sleep", {"seconds": 2, "steps": 8})

    row = page.locator('tr[data-type="sleep"]')
    expect(row).to_have_count(1)
    # The bar moves while the job runs: two distinct values between 0 and 100 at least.
    page.wait_for_function(
        "() => new Set(window.progressSeen.filter(v => v > 0 && v < 100)).size >= 2",
        timeout=DEADLINE_MS,
    )
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOT.with_name("dashboard-running.png"), full_page=True)
    expect(row).to_have_attribute("data-status", "succeeded")
    expect(row.locator("progress")).to_have_js_property("value", 100)
    expect(row.get_by_role("button", name="Cancel")).to_have_count(0)
    expect(row.get_by_role("button", name="Retry")).to_have_count(0)

    seen: list[float] = page.evaluate("window.progressSeen")
    assert seen == sorted(seen), f"progress went backwards: {seen}"
    assert len({v for v in seen if 0 < v < 100}) >= 2, seen
    assert seen[-1] == 100, seen

    page.screenshot(path=SCREENSHOT, full_page=True)


def test_cancel_and_retry_buttons_act_on_a_running_job(dashboard_url: str, page: Page) -> None:
    connect(page, dashboard_url)
    earlier = page.locator("#jobs tbody tr").count()
    submit(page, "sleep", {"seconds": 60, "steps": 60})
    expect(page.locator("#jobs tbody tr")).to_have_count(earlier + 1)
    row = page.locator("#jobs tbody tr").first  # newest first

    expect(row).to_have_attribute("data-status", "running")
    row.get_by_role("button", name="Cancel").click()
    expect(row).to_have_attribute("data-status", "cancelled")

    row.get_by_role("button", name="Retry").click()
    expect(row).to_have_attribute("data-status", "running")
    # Cancelled again so the consumer is idle when the fixture stops it.
    row.get_by_role("button", name="Cancel").click()
    expect(row).to_have_attribute("data-status", "cancelled")


def test_a_new_attempt_shows_no_progress_from_the_last_one(dashboard_url: str, page: Page) -> None:
    """A retry's (or a reclaim's) `job.started` resets the row as the script resets the hash,
    rather than showing the last attempt's figure until the new one reports. The event is
    the one a retry would publish, handed to the page's own handler for a real job's row."""
    connect(page, dashboard_url)
    submit(page, "noop", {})
    row = page.locator('tr[data-type="noop"]').first
    expect(row).to_have_attribute("data-status", "succeeded")
    expect(row.locator("progress")).to_have_js_property("value", 100)
    job_id = row.get_attribute("data-job-id")
    assert job_id
    event = {
        "id": "9999999999999-0",  # after every real event of the job
        "event": "job.started",
        "job_id": job_id,
        "queue": "q",
        "job_type": "noop",
        "status": "running",
        "attempt": 2,
        "data": {"owner": "another-consumer"},
    }
    page.evaluate("event => onEvent({ data: JSON.stringify(event) })", event)
    expect(row).to_have_attribute("data-status", "running")
    expect(row.locator("progress")).to_have_js_property("value", 0)


def test_choosing_a_type_fills_the_payload_from_its_schema(dashboard_url: str, page: Page) -> None:
    """The editor starts from a skeleton of the type's payload (GET /v1/job-types), and each
    field is listed with its type, whether it is required or its default, and its hint."""
    connect(page, dashboard_url)
    editor = page.get_by_label("Payload (JSON)")
    fields = page.locator("#payload-fields li")

    page.get_by_label("Job type").select_option("ingest_url")
    expect(fields).to_have_count(3)
    assert json.loads(editor.input_value()) == {"url": "https://example.com/"}
    expect(fields.nth(0)).to_have_text("url string, required — an http or https URL")
    expect(fields.nth(2)).to_contain_text("max_bytes integer, default null —")

    page.get_by_label("Job type").select_option("sleep")
    expect(fields.nth(1)).to_have_text(
        "steps integer, default 10, ≥ 1 — progress reports, evenly spaced"
    )
    assert json.loads(editor.input_value()) == {"seconds": 5}

    page.get_by_label("Job type").select_option("noop")
    expect(fields).to_have_text(["any JSON object"])
    assert json.loads(editor.input_value()) == {}
    page.get_by_role("button", name="Submit").click()  # a skeleton is a payload that fits
    expect(page.locator("#submit-status")).to_contain_text("Submitted noop job")


def test_a_parent_shows_its_children_and_a_step_shows_in_the_stage(
    dashboard_url: str, page: Page
) -> None:
    connect(page, dashboard_url)
    children = [{"type": "sleep", "payload": {"seconds": 0.5, "steps": 1}}] * 2
    response = httpx.post(
        f"{dashboard_url}/v1/jobs",
        json={"type": "noop", "payload": {"flow": 1}, "children": children},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert response.status_code == 202, response.text
    parent = page.locator(f'tr[data-job-id="{response.json()["id"]}"]')
    expect(parent).to_contain_text("0/2 children ended")
    expect(parent).to_have_attribute("data-status", "succeeded")
    expect(parent).to_contain_text("2/2 children ended")

    # A step's start, as a multi-step handler's would publish it, on a real job's row.
    row = page.locator('tr[data-type="sleep"]').first
    job_id = row.get_attribute("data-job-id")
    event = {
        "id": "9999999999999-0",
        "event": "job.step",
        "job_id": job_id,
        "queue": "q",
        "job_type": "sleep",
        "status": "running",
        "attempt": 2,
        "data": {"step": "transcode", "state": "started"},
    }
    page.evaluate("event => onEvent({ data: JSON.stringify(event) })", event)
    expect(row.locator("td").nth(3)).to_contain_text("transcode")
    expect(row.locator("td").nth(3)).to_contain_text("step 0/1 done")


def test_schedules_are_listed_with_their_next_run(dashboard_url: str, page: Page) -> None:
    response = httpx.post(
        f"{dashboard_url}/v1/schedules",
        json={"name": "nightly-report", "cron": "0 3 * * *", "type": "noop"},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert response.status_code in (200, 201), response.text
    connect(page, dashboard_url)
    panel = page.locator("#schedules-panel")
    expect(panel).to_be_visible()
    expect(panel.locator("tbody tr")).to_contain_text(["nightly-report"])
    expect(panel.locator("tbody tr").first).to_contain_text("0 3 * * *")
    expect(panel.locator("tbody tr").first).to_contain_text("never")


def test_a_priority_is_chosen_on_submit_and_a_held_job_says_why(
    dashboard_url: str, page: Page
) -> None:
    """The form sends the chosen priority and the row shows it; a queued job's `message`
    (what a gate holds it back for) shows under its status."""
    connect(page, dashboard_url)
    page.get_by_label("Priority").select_option("9")
    submit(page, "noop", {})
    row = page.locator('tr[data-type="noop"]').first
    expect(row).to_contain_text("priority 9")
    job_id = row.get_attribute("data-job-id")
    response = httpx.get(
        f"{dashboard_url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert response.json()["priority"] == 9

    held = {**response.json(), "id": "f" * 32, "status": "queued", "last_event_id": None,
            "message": "waiting for the rate limit: 20/s per tenant"}  # fmt: skip
    page.evaluate("job => upsert(job)", held)
    expect(page.locator(f'tr[data-job-id="{"f" * 32}"]')).to_contain_text(
        "waiting for the rate limit: 20/s per tenant"
    )
