"""Checks of the Redis deployment that every process runs at start."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

logger = logging.getLogger("conveyor")


async def warn_if_evicting(redis: Any, timeout_s: float = 2.0) -> str | None:
    """A Redis that evicts keys under memory pressure can silently drop jobs: say so loudly.
    Returns the policy when it is not `noeviction`. Never fails start-up: CONFIG may be
    disabled (managed Redis) or Redis still down, and then there is nothing to check."""
    try:
        reply = await asyncio.wait_for(redis.config_get("maxmemory-policy"), timeout_s)
    except Exception:
        return None
    policy = reply.get("maxmemory-policy")
    if not policy or policy == "noeviction":
        return None
    logger.warning(
        "Redis maxmemory-policy is %r: under memory pressure Redis may evict job keys. "
        "Set maxmemory-policy noeviction for Conveyor's durability contract (README).",
        policy,
    )
    return str(policy)
