"""Checks of the Redis deployment that every process runs at start."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

logger = logging.getLogger("conveyor")

# At or under this, a job's own (short) events stream does not hold a 4 KiB first node.
STREAM_NODE_MAX_BYTES = 512


async def _config(redis: Any, name: str, timeout_s: float) -> str | None:
    """One CONFIG value, or None: CONFIG may be disabled (managed Redis) or Redis still down,
    and a check must never fail start-up."""
    try:
        reply = await asyncio.wait_for(redis.config_get(name), timeout_s)
    except Exception:
        return None
    value = reply.get(name)
    return None if value is None else str(value)


async def warn_if_evicting(redis: Any, timeout_s: float = 2.0) -> str | None:
    """A Redis that evicts keys under memory pressure can silently drop jobs: say so loudly.
    Returns the policy when it is not `noeviction`."""
    policy = await _config(redis, "maxmemory-policy", timeout_s)
    if not policy or policy == "noeviction":
        return None
    logger.warning(
        "Redis maxmemory-policy is %r: under memory pressure Redis may evict job keys. "
        "Set maxmemory-policy noeviction for Conveyor's durability contract (README).",
        policy,
    )
    return policy


async def note_stream_node_size(redis: Any, timeout_s: float = 2.0) -> int | None:
    """Redis gives every new stream a first node of `stream-node-max-bytes` (capped at 4 KiB,
    0 meaning no cap), and every job has its own stream, kept for the retention period: at
    4096 a finished job holds 5.5 KB instead of 2.1 KB. Not a risk, so said at INFO. Returns
    the setting when it is over `STREAM_NODE_MAX_BYTES`."""
    value = await _config(redis, "stream-node-max-bytes", timeout_s)
    if value is None or not value.isdigit():
        return None
    size = int(value)
    if 0 < size <= STREAM_NODE_MAX_BYTES:
        return None
    logger.info(
        "Redis stream-node-max-bytes is %d: each finished job keeps more memory than "
        "at %d (README, Retention).",
        size,
        STREAM_NODE_MAX_BYTES,
    )
    return size
