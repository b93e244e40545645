"""How the commands show events and jobs in a terminal: one line each, the same whether
they came from the store or through the gateway."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Protocol


class Shown(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def event(self) -> str: ...
    @property
    def attempt(self) -> int: ...
    @property
    def data(self) -> dict[str, Any]: ...


def event_line(event: Shown) -> str:
    details = " ".join(f"{k}={json.dumps(v)}" for k, v in sorted(event.data.items()))
    return f"{event.id} {event.event:<22} attempt={event.attempt} {details}".rstrip()


def timestamp(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
