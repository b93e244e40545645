"""The consumers of a queue's groups, kept truthful: each live consumer marks itself seen in
`conveyor:{q}:consumers` (its heartbeat), and any consumer removes the ones gone too long.

Without the removal, `XINFO CONSUMERS` lists every process that ever ran, and
`conveyor inspect` with it; Redis never forgets a consumer by itself.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from redis.exceptions import ResponseError

from consumers.hooks import FAILURE_GROUP
from schemas.keys import CONSUMER_GROUP, QueueKeys

if TYPE_CHECKING:
    from arq.connections import ArqRedis

logger = logging.getLogger("conveyor.worker")


async def mark_seen(pool: ArqRedis, keys: QueueKeys, consumer: str) -> None:
    await pool.hset(  # type: ignore[misc]
        keys.consumer_seen(), consumer, str(int(time.time() * 1000))
    )


async def forget_gone_consumers(
    pool: ArqRedis, keys: QueueKeys, me: str, idle_cleanup_s: float
) -> None:
    """Remove consumers not seen for `idle_cleanup_s` that hold nothing. A live one removed
    by mistake (it could not be: its heartbeat marks it seen) would be recreated by its next
    XREADGROUP."""
    seen = await pool.hgetall(keys.consumer_seen())  # type: ignore[misc]
    cutoff_ms = (time.time() - idle_cleanup_s) * 1000
    for stream, group in ((keys.jobs, CONSUMER_GROUP), (keys.dead, FAILURE_GROUP)):
        try:
            consumers = await pool.xinfo_consumers(stream, group)
        except ResponseError:  # no such group (yet)
            continue
        for consumer in consumers:
            name = consumer["name"]
            if name == me or consumer["pending"]:
                continue
            if int(seen.get(name, 0)) < cutoff_ms:
                # Not a MULTI: redis-py refuses transactions on a cluster. In this order, a
                # pass cut in between leaves a consumer never seen, which the next removes.
                async with pool.pipeline(transaction=False) as pipe:
                    pipe.hdel(keys.consumer_seen(), name)
                    pipe.xgroup_delconsumer(stream, group, name)
                    await pipe.execute()
                logger.info("removed consumer %s from %s (gone)", name, group)
