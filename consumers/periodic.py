"""How the loops beside the consumer loop run (consumers/supervision.py, consumers/upkeep.py):
a step every so often until the worker stops, surviving errors, and sleeps that end at once
when the worker stops, so a shutdown does not wait out an interval."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger("conveyor.worker")


async def pause(stopping: asyncio.Event, seconds: float) -> None:
    """Sleep, but wake at once when the worker stops."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), seconds)


async def every(
    stopping: asyncio.Event, interval_s: float, step: Callable[[], Awaitable[None]]
) -> None:
    """Run `step` every `interval_s` until the worker stops, surviving errors (Redis
    restarts, timeouts)."""
    while not stopping.is_set():
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("%s failed; retrying in %.1fs", step.__name__, interval_s)
        await pause(stopping, interval_s)
