"""Flow-control gates a job type declares: a rate limit and a cap on how many run at once,
each for the whole type or per key (the tenant, or a payload field). Enforced when a job
starts, inside the start script (producer/scripts/includes/start_job.lua, `pass_gates`), so
every worker of the queue shares one count on Redis's clock; a job that may not start yet is
held (still `queued`, no attempt used, its `message` saying what for) and let go in order
when its gate opens: a slot freed by a job's end, or the rate's next free start.

    declare(transcribe, rate_limit="120/m", rate_key="tenant")
    declare(render, max_running=2, concurrency_key="payload.account")
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from schemas.rates import Rate

KEY_SPEC = re.compile(r"^(tenant|payload\.[A-Za-z0-9_-]{1,64})$")


def check_key(spec: str | None, what: str) -> str:
    """'' for one gate per type, else `tenant` or `payload.<field>`."""
    if spec is None or spec == "":
        return ""
    if not KEY_SPEC.match(spec):
        raise ValueError(f"{what}: 'tenant' or 'payload.<field>', not {spec!r}")
    return spec


@dataclass(frozen=True, slots=True)
class Gate:
    rate: Rate | None = None
    rate_key: str = ""
    max_running: int = 0  # 0: no cap
    concurrency_key: str = ""

    @classmethod
    def declare(
        cls,
        *,
        rate_limit: str | None = None,
        rate_key: str | None = None,
        max_running: int | None = None,
        concurrency_key: str | None = None,
    ) -> Gate | None:
        """The gate of a handler's declaration, or None for an ungated one. Wrong values
        fail here, when the worker settings are loaded, not when the first job starts."""
        if rate_key and not rate_limit:
            raise ValueError("rate_key: set rate_limit too (the rate per key)")
        if concurrency_key and not max_running:
            raise ValueError("concurrency_key: set max_running too (how many run per key)")
        if max_running is not None and (isinstance(max_running, bool) or max_running < 1):
            raise ValueError(f"max_running: a whole number of at least 1, not {max_running!r}")
        if not rate_limit and not max_running:
            return None
        return cls(
            rate=Rate.parse(rate_limit) if rate_limit else None,
            rate_key=check_key(rate_key, "rate_key"),
            max_running=max_running or 0,
            concurrency_key=check_key(concurrency_key, "concurrency_key"),
        )

    def as_lua(self) -> list[object]:
        """{interval ms, rate key, max running, concurrency key, the rate as written}."""
        return [
            self.rate.interval_ms if self.rate else 0,
            self.rate_key,
            self.max_running,
            self.concurrency_key,
            str(self.rate) if self.rate else "",
        ]

    def describe(self) -> dict[str, object]:
        """For `GET /v1/job-types` and the dashboard."""
        described: dict[str, object] = {}
        if self.rate:
            described["rate_limit"] = str(self.rate)
            if self.rate_key:
                described["rate_key"] = self.rate_key
        if self.max_running:
            described["max_running"] = self.max_running
            if self.concurrency_key:
                described["concurrency_key"] = self.concurrency_key
        return described


def gates_argument(gates: Mapping[str, Gate | None]) -> str:
    """What the start scripts take: the gated types' gates as JSON, '' when none is (a
    consumer of ungated types sends nothing more than before)."""
    gated = {name: gate.as_lua() for name, gate in gates.items() if gate is not None}
    return json.dumps(gated, separators=(",", ":")) if gated else ""
