"""What a step of a multi-step job (`ctx.step`, consumers/steps.py) costs: Redis's
instructions and the consumer's CPU per recorded step.

    .venv/bin/python -m bench.steps [--jobs 2000] [--steps 10]

Drains N jobs of one handler (bench/step_handlers.py) whose jobs run K no-op steps, and N
jobs of the same handler running none; each drain on its own fresh redis-server, filled
first, drained by one burst consumer process (concurrency 200). Twice:

- under callgrind, as `bench.redis_cost` counts (counters zeroed once the queue is filled,
  read after the drain): Redis's instructions per job of each drain;
- without callgrind: the consumer process's CPU (user + system, /proc/<pid>/stat), and
  that of a consumer that finds its queue empty (its start-up and burst exit).

A step is two script calls (its start, its end, each with its `job.step` event), so per
step = (with steps - without) / K per job; the consumer's start-up is in both drains and
drops out of the difference. The CPU is counted in clock ticks (10 ms): at the defaults,
±0.5 µs per step, ±5 µs per plain job. Needs `valgrind` (apt-get install valgrind). Prints
one line: `step_kinstr=… plain_job_kinstr=… step_job_kinstr=… worker_cpu_us_per_step=…
plain_job_cpu_us=…`.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
from pathlib import Path

from bench.drain import Drained, check_drained, drain, fill
from bench.redis_cost import conveyor_cost
from conveyor.embedded_redis import EmbeddedRedis

HANDLERS = "bench.step_handlers"


async def consumer_cpu(jobs: int, steps: int, data_dir: Path) -> Drained:
    with EmbeddedRedis(data_dir / "redis") as server:
        queue = "steps"
        if jobs:
            await fill(server.url, queue, jobs, "stepped", {"steps": steps})
        drained = await drain(server.url, queue, data_dir, name=f"steps-{steps}", handlers=HANDLERS)
        await check_drained(server.url, queue)
        return drained


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    jobs, steps = args.jobs, args.steps
    if steps < 1:
        parser.error("--steps must be at least 1")
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("bench.steps needs valgrind (apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="conveyor-steps-") as tmp:
        data = Path(tmp)
        plain = await conveyor_cost(jobs, data / "plain", "stepped", {"steps": 0}, HANDLERS)
        stepped = await conveyor_cost(jobs, data / "stepped", "stepped", {"steps": steps}, HANDLERS)
        empty_cpu = await consumer_cpu(0, 0, data / "empty-cpu")
        plain_cpu = await consumer_cpu(jobs, 0, data / "plain-cpu")
        stepped_cpu = await consumer_cpu(jobs, steps, data / "stepped-cpu")
    for n, k, drained in ((0, 0, empty_cpu), (jobs, 0, plain_cpu), (jobs, steps, stepped_cpu)):
        print(
            f"drain jobs={n} steps={k} consumer_cpu_s={drained.cpu_s:.2f} "
            f"wall_s={drained.wall_s:.2f}",
            flush=True,
        )
    per_step_cpu = (stepped_cpu.cpu_s - plain_cpu.cpu_s) / (jobs * steps)
    per_job_cpu = (plain_cpu.cpu_s - empty_cpu.cpu_s) / jobs
    print(
        f"step_kinstr={(stepped - plain) / steps / 1000:.1f} "
        f"plain_job_kinstr={plain / 1000:.0f} step_job_kinstr={stepped / 1000:.0f} "
        f"worker_cpu_us_per_step={per_step_cpu * 1e6:.0f} "
        f"plain_job_cpu_us={per_job_cpu * 1e6:.0f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
