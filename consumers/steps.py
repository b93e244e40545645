"""`ctx.step(name, fn, ...)`: the steps of a multi-step job, each run at most once per job to
success.

A pipeline (download → upload → transcribe → translate) fails in its last step far more often
than in its first, and the first is the three-minute one. So each step's result is recorded
when it succeeds, fenced by the attempt, by the script that writes its `job.step` event
(producer/scripts/step.lua); a later attempt of the job (an automatic retry, a reclaim after
a crash, `POST /retry`) gets the recorded result back at once instead of running the step.

A step's result is JSON or an `Artifact` (the object stays in S3; the record keeps its
reference). An attempt that lost its job (frozen past its lease, then resumed) can neither
record a step nor overwrite one: the script refuses, and the attempt is stopped here.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from consumers.errors import describe
from schemas import tracing
from schemas.errors import LeaseLost, PermanentError
from schemas.events import StepState
from schemas.models import Artifact
from schemas.strict_json import NotStrictJson, check_json

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from producer import Delivery, Producer

MAX_STEPS = 1000  # per job, loops with computed names (f"chunk-{i}") included
STEP_NAME = re.compile(r"^[^\x00-\x1f]{1,200}$")


class Steps:
    """The steps of one attempt: which names it used (a name is unique within a job), and
    the writes of each step's start and end."""

    def __init__(
        self,
        producer: Producer,
        delivery: Delivery,
        *,
        on_lease_lost: Callable[[], None],
        keep_artifact: Callable[[Artifact], None],
        span: Span | None = None,
    ) -> None:
        self._producer = producer
        self._delivery = delivery
        self._on_lease_lost = on_lease_lost
        self._keep_artifact = keep_artifact
        self._used: set[str] = set()
        self.span = span  # the attempt's, when its worker traces: each step's is its child

    async def begin(self, name: str) -> tuple[bool, Any]:
        """`(True, result)` for a step an earlier attempt completed (restored), else
        `(False, None)`: the step is recorded as started and must run now."""
        if not isinstance(name, str) or not STEP_NAME.fullmatch(name):
            raise PermanentError(f"a step name is 1-200 printable characters, not {name!r}")
        if name in self._used:
            raise PermanentError(f"step {name!r} ran twice in one attempt: names are unique")
        self._used.add(name)
        outcome, record = await self._producer.start_step(self._delivery, name, MAX_STEPS)
        if outcome == "fenced":
            await self._lost()
        if outcome == "too_many":
            raise PermanentError(f"a job has at most {MAX_STEPS} steps; {name!r} is one more")
        if outcome == StepState.RESTORED and record is not None:
            if record.get("kind") == "artifact":
                artifact = Artifact.model_validate(record["result"])
                self._keep_artifact(artifact)
                return True, artifact
            return True, record.get("result")
        return False, None

    async def succeeded(self, name: str, started: float, result: Any) -> None:
        if not isinstance(result, Artifact):
            try:
                check_json(result, f"the result of step {name!r}")
            except NotStrictJson as exc:  # the same value every time: retrying cannot help
                raise PermanentError(
                    f"step {name!r} returned what cannot be stored: {exc}"
                ) from None
        if not await self._producer.end_step(
            self._delivery, name, _ms_since(started), result=result
        ):
            await self._lost()

    async def failed(self, name: str, started: float, exc: BaseException) -> None:
        error = describe(exc)
        if not await self._producer.end_step(self._delivery, name, _ms_since(started), error=error):
            await self._lost()

    async def _lost(self) -> None:
        """The attempt was fenced out: stop the job's task as a lost lease does (nothing more
        is written), and, from a handler's thread, end the handler with `LeaseLost`."""
        self._on_lease_lost()
        await asyncio.sleep(0)  # in the job's own task, the cancel lands here
        raise LeaseLost(f"job {self._delivery.job_id} was taken over by another consumer")


async def run_step(
    steps: Steps, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any
) -> Any:
    """The body of `JobContext.step`: restore, or run `fn` and record how it ended. A
    cancel (user, timeout, shutdown) is not the step's failure: nothing is recorded. Within
    the step's span, when the attempt has one."""
    with tracing.step(steps.span, name) as span:
        restored, value = await steps.begin(name)
        if restored:
            tracing.step_state(span, "restored")
            return value
        started = time.monotonic()
        try:
            value = fn(*args, **kwargs)
            if inspect.isawaitable(value):
                value = await value
        except Exception as exc:
            await steps.failed(name, started, exc)
            raise
        await steps.succeeded(name, started, value)
        tracing.step_state(span, "succeeded")
        return value


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
