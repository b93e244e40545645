"""Redis stream entry ids (`<ms>-<seq>`): parsed in one place, for the SSE `Last-Event-ID`,
the hub's positions, replay bounds and a delivery's age."""

from __future__ import annotations

import re

STREAM_ID = re.compile(r"^([0-9]{1,20})-([0-9]{1,20})$")
MAX_ID_PART = 2**64 - 1

StreamKey = tuple[int, int]
"""An id as a comparable pair: ids compare as Redis orders them."""


def parse_id(entry_id: str) -> StreamKey:
    """An id Redis made, as a comparable pair. Raises ValueError for anything else."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def is_stream_id(text: str) -> bool:
    """Whether Redis would take `text` as an entry id: `<ms>-<seq>`, digits only, each part
    within 64 bits. `int()` alone also takes `1_000`, ` 1` and `1-`; Redis refuses those, and
    a Last-Event-ID refused mid-stream aborted the response after its 200."""
    match = STREAM_ID.fullmatch(text)
    return match is not None and all(int(part) <= MAX_ID_PART for part in match.groups())


def entry_time_s(entry_id: str) -> float:
    """When Redis added the entry (the id's milliseconds), in seconds since the epoch."""
    return int(entry_id.partition("-")[0]) / 1000
