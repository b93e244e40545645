"""What Redis executes per no-op job of a drain, for Conveyor and for BullMQ, counted in
instructions by callgrind: a figure that holds on a shared machine, where the wall-clock
rates of `bench.bullmq` move 15% between rounds.

    .venv/bin/python -m bench.redis_cost [--jobs 2000]

Needs `valgrind` (Debian: apt-get install valgrind) and, for BullMQ, `node` and `npm` (as
`bench.bullmq`). Each system gets its own redis-server under callgrind, configured as
`conveyor run` runs it (AOF on) except that AOF rewrites are off, so a rewrite's fork cannot
land in one side's count. Each fills a queue, the counters are zeroed, one consumer drains
it (Conveyor's worker process; a BullMQ Worker at concurrency 200), and the counters are
read. Only Redis is counted, not the consumers. Prints one line:
`conveyor_kinstr_per_job=N bullmq_kinstr_per_job=M ratio=R` (ratio below 1: Conveyor's
Redis does less work per job).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench.bullmq import HERE as BULLMQ_DIR
from bench.bullmq import ensure_bullmq
from bench.drain import check_drained, drain, fill
from conveyor.embedded_redis import EmbeddedRedis


class CallgrindRedis(EmbeddedRedis):
    """The embedded Redis, run under callgrind; its counters are zeroed and read by pid."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir, extra_args=["--auto-aof-rewrite-percentage", "0"])

    def argv(self, executable: str, port: int) -> list[str]:
        out = self.data_dir / "callgrind.%p"
        return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                *super().argv(executable, port)]  # fmt: skip

    def _control(self, action: str) -> None:
        argv = ["callgrind_control", action, str(self.pid)]
        subprocess.run(argv, check=True, capture_output=True)

    def zero(self) -> None:
        self._control("--zero")

    def instructions(self) -> int:
        """Instructions since `zero` (or the last dump: a dump zeroes the counters too), from
        a dump requested now: callgrind numbers its dumps, so the newest is this one."""
        self._control("--dump")
        dumps = sorted(
            self.data_dir.glob(f"callgrind.{self.pid}.*"),
            key=lambda dump: int(dump.suffix[1:]),
        )
        for dump in dumps[-1:]:
            for line in dump.read_text().splitlines():
                if line.startswith("totals:"):
                    return int(line.split()[1])
        raise RuntimeError(f"callgrind wrote no dump under {self.data_dir}")


async def conveyor_cost(
    jobs: int,
    data_dir: Path,
    job_type: str = "noop",
    payload: dict[str, Any] | None = None,
    handlers: str | None = None,
) -> float:
    """Instructions per job of one consumer draining `jobs` jobs of `job_type`, the queue
    filled before the counters are zeroed."""
    with CallgrindRedis(data_dir / "redis") as server:
        queue = "cost"
        await fill(server.url, queue, jobs, job_type, payload or {})
        server.zero()
        await drain(server.url, queue, data_dir, name="conveyor-cost", handlers=handlers)
        instructions = server.instructions()
        await check_drained(server.url, queue)
        return instructions / jobs


def bullmq_cost(node: str, jobs: int, data_dir: Path) -> float:
    with CallgrindRedis(data_dir / "redis") as server:
        env = {**os.environ, "BENCH_REDIS_PORT": str(server.port), "BENCH_JOBS": str(jobs)}
        with subprocess.Popen(
            [node, "drain_on_cue.cjs"], cwd=BULLMQ_DIR, env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        ) as drain:  # fmt: skip
            assert drain.stdin is not None and drain.stdout is not None
            if drain.stdout.readline().strip() != "filled":
                raise RuntimeError("BullMQ's fill did not finish")
            server.zero()
            drain.stdin.write("go\n")
            drain.stdin.flush()
            if drain.stdout.readline().strip() != "drained":
                raise RuntimeError("BullMQ's drain did not finish")
        return server.instructions() / jobs


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("bench.redis_cost needs valgrind (apt-get install valgrind)")
    node = ensure_bullmq()
    with tempfile.TemporaryDirectory(prefix="conveyor-cost-") as tmp:
        ours = await conveyor_cost(args.jobs, Path(tmp) / "conveyor")
        theirs = bullmq_cost(node, args.jobs, Path(tmp) / "bullmq")
    print(
        f"conveyor_kinstr_per_job={ours / 1000:.0f} bullmq_kinstr_per_job={theirs / 1000:.0f} "
        f"ratio={ours / theirs:.2f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
