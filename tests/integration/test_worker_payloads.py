"""Payloads that reach a real worker process around the gateway (submitted to the store
directly): one that cannot fit its handler fails at once, on its first attempt; a TypeError
of the handler's own is retried like any other error."""

from __future__ import annotations

from collections.abc import Callable

from conveyor.process import ManagedProcess
from schemas import JobStatus
from tests.integration.helpers import Driver, wait_for_terminal


async def test_a_payload_that_cannot_fit_fails_on_its_first_attempt_without_retrying(
    driver: Driver, spawn_worker: Callable[..., ManagedProcess]
) -> None:
    cannot_fit = {
        # the typo DESIGN's section is about: five attempts of TypeError before
        await driver.submit("sleep", payload={"secs": 1}): (
            "InvalidPayload: payload.seconds: Field required; "
            "payload.secs: Extra inputs are not permitted"
        ),
        # a plain `def` handler, which runs in a thread, is checked the same way
        await driver.submit("blocking_def", payload={"seconds": "soon"}): (
            "InvalidPayload: payload.seconds: Input should be a valid number, unable to parse "
            "string as a number"
        ),
        # fits the model (anything does) but not the signature: a binding TypeError
        await driver.submit("noop", payload={"ctx": 1}): (
            "InvalidPayload: payload: multiple values for argument 'ctx'"
        ),
        await driver.submit("area", payload={"width": 2}): (
            "InvalidPayload: payload.height: Field required"
        ),
    }
    fits = {
        await driver.submit("area", payload={"width": 2, "height": "3"}): {
            "area": 6,
            "given": "Area",  # the handler got the validated model
        },
        await driver.submit("noop_area", payload={"width": 2, "height": "3"}): {
            "width": 2,
            "height": 3,  # declare(noop, payload=Area): validated fields as keywords
        },
    }
    own_type_error = await driver.submit("add", payload={"a": 1, "b": "x"})  # max_tries=2
    spawn_worker("w")
    job_ids = {*cannot_fit, *fits, own_type_error}
    terminal = await wait_for_terminal(driver.redis, driver.queue, job_ids, 30)
    assert terminal == {
        **{job_id: ["job.failed"] for job_id in [*cannot_fit, own_type_error]},
        **{job_id: ["job.succeeded"] for job_id in fits},
    }
    for job_id, error in cannot_fit.items():
        job = await driver.producer.get(driver.queue, job_id)
        assert job is not None
        assert (job.status, job.attempt, job.error) == (JobStatus.FAILED, 1, error)
        assert "job.retrying" not in await driver.event_types(job_id)
    for job_id, result in fits.items():
        job = await driver.producer.get(driver.queue, job_id)
        assert job is not None and job.result == result
    job = await driver.producer.get(driver.queue, own_type_error)
    assert job is not None and job.attempt == 2
    assert job.error == "TypeError: unsupported operand type(s) for +: 'int' and 'str'"
    assert (await driver.event_types(own_type_error)).count("job.retrying") == 1
