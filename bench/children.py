"""Per-job overhead of where a handler's work runs (consumers/children.py), one trivial call each.

    .venv/bin/python -m bench.children [--calls 50]

- direct: awaiting an `async def` that returns at once (mean over 10,000 calls);
- thread hop: `asyncio.to_thread` of a `def`, what a plain `def` handler pays (median of 1,000);
- process cold: the first `run_process` of this process, starting the forkserver;
- process warm: `run_process` once the server runs (median of `--calls`): a fresh child per
  call, set up (PDEATHSIG, session, limits) and reaped;
- command: `run_command(["true"])` (median of `--calls`), the limits wrapper's exec included.

Prints one line: `direct_us=… thread_hop_us=… process_cold_ms=… process_warm_ms=… command_ms=…`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

from consumers.children import run_command, run_process


def noop() -> int:
    return 1


async def anoop() -> int:
    return 1


async def median_s(call: Callable[[], Awaitable[object]], calls: int) -> float:
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        await call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()

    started = time.perf_counter()
    for _ in range(10_000):
        await anoop()
    direct = (time.perf_counter() - started) / 10_000
    thread_hop = await median_s(lambda: asyncio.to_thread(noop), 1_000)

    started = time.perf_counter()
    assert await run_process(noop) == 1
    cold = time.perf_counter() - started
    warm = await median_s(lambda: run_process(noop), args.calls)
    command = await median_s(lambda: run_command(["true"]), args.calls)
    print(
        f"direct_us={direct * 1e6:.2f} thread_hop_us={thread_hop * 1e6:.0f} "
        f"process_cold_ms={cold * 1e3:.0f} process_warm_ms={warm * 1e3:.1f} "
        f"command_ms={command * 1e3:.1f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
