"""When a call is tried again, and after how long."""

from __future__ import annotations

import random
from dataclasses import dataclass

import httpx

from conveyor.client.errors import retry_after

# Answers that say "not now" rather than "no": the gateway's 503 (Redis slow or full) and 429
# (a tenant quota), and a load balancer's 502 and 504 in front of gateway replicas.
TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})

# Failures before the request left this process: the gateway cannot have acted on it.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class Retries:
    """Exponential backoff: try up to `attempts` times in all, waiting `backoff_s`, then twice
    that, and so on up to `max_backoff_s`, each wait drawn between half and all of it so that
    many clients turned away together do not all come back together. A `Retry-After` from the
    gateway is waited instead; one longer than `max_backoff_s` is not waited out (the error
    is raised, carrying `retry_after`) rather than blocking the caller that long unasked.

    The defaults ride out a gateway restart or a Redis failover of about 15 seconds."""

    attempts: int = 8
    backoff_s: float = 0.25
    max_backoff_s: float = 5.0

    def delay(self, failures: int, retry_after: float | None = None) -> float | None:
        """Seconds to wait after the `failures`-th failure in a row (1 for the first), or None
        to give up."""
        if failures >= self.attempts:
            return None
        if retry_after is not None:
            return retry_after if retry_after <= self.max_backoff_s else None
        ceiling = min(self.max_backoff_s, self.backoff_s * 2.0 ** (failures - 1))
        return ceiling * random.uniform(0.5, 1.0)

    def after(
        self, failures: int, failure: httpx.Response | httpx.TransportError, *, idempotent: bool
    ) -> float | None:
        """Seconds to wait before sending a call again after its `failures`-th failure in a
        row (an error answer or no answer), or None to give up. A call that is safe to repeat
        is sent again after any transient failure; any other only if it never left."""
        if isinstance(failure, httpx.Response):
            if not (idempotent and transient(failure)):
                return None
            return self.delay(failures, retry_after(failure))
        if not (idempotent or isinstance(failure, NOT_SENT)):
            return None
        return self.delay(failures)


def transient(response: httpx.Response) -> bool:
    return response.status_code in TRANSIENT_STATUSES
