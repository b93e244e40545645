"""HTTP submit latency and throughput through one gateway process.

    .venv/bin/python -m bench.http_submit [--jobs 5000] [--clients 32] [--access-log]

Starts its own redis-server and one gateway process (uvicorn, as `conveyor gateway` runs it,
but without per-request access log lines unless --access-log) on free loopback ports.
`--clients` concurrent httpx clients, each with its own connection, POST `noop` jobs until
`--jobs` were accepted; no consumer runs, so only the submit path is measured. Latency is
per request on the client's clock; throughput is accepted jobs over the wall time of the run.
Everything (Redis, gateway, clients) shares the machine's cores, so the clients' own CPU is
part of the figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from conveyor.embedded_redis import EmbeddedRedis
from conveyor.process import ManagedProcess, free_port, port_open, wait_until

REPO = Path(__file__).resolve().parents[1]
API_KEY = "bench-key"
TENANT = "bench"
QUEUE = "bench"
WARMUP = 200


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


@dataclass
class Gateway:
    url: str
    redis_url: str
    process: ManagedProcess


@contextlib.contextmanager
def gateway(
    workdir: Path, *, access_log: bool = False, backlog: int = 2048, as_deployed: bool = False
) -> Iterator[Gateway]:
    """Its own redis-server and one gateway process; both stopped by pid on the way out.
    The gateway inherits this process's resource limits (RLIMIT_NOFILE included).

    By default the gateway is a bare `uvicorn ... --factory`; `as_deployed` runs it as
    `conveyor gateway` does instead (`gateway.server.serve`: its connection-limiting HTTP
    protocol and the listening socket's fixed send buffer), logging warnings only."""
    with EmbeddedRedis(workdir / "redis") as redis:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        env.update(
            CONVEYOR_REDIS_URL=redis.url,
            CONVEYOR_API_KEYS=f"{API_KEY}={TENANT}",
            CONVEYOR_QUEUES=QUEUE,
            CONVEYOR_TOKEN_SECRET="bench",
        )
        if as_deployed:
            env.update(
                CONVEYOR_HOST="127.0.0.1", CONVEYOR_PORT=str(port), CONVEYOR_LOG_LEVEL="warning"
            )
            argv = [sys.executable, "-m", "conveyor.cli", "gateway"]
        else:
            argv = [
                sys.executable, "-m", "uvicorn", "conveyor.gateway_app:app_from_env", "--factory",
                "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
                "--backlog", str(backlog), "--access-log" if access_log else "--no-access-log",
            ]  # fmt: skip
        process = ManagedProcess(
            "gateway", argv, env=env, cwd=workdir, log_path=workdir / "gateway.log"
        ).start()
        try:
            wait_until(lambda: port_open("127.0.0.1", port) or not process.alive(), 30, "gateway")
            if not process.alive():
                raise RuntimeError(f"gateway exited:\n{process.log_tail()}")
            yield Gateway(f"http://127.0.0.1:{port}", redis.url, process)
        finally:
            process.stop()


async def submit_all(url: str, jobs: int, clients: int) -> tuple[list[float], float]:
    """Latencies (ms) of `jobs` submits by `clients` concurrent clients, and the wall time."""
    remaining = jobs
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {API_KEY}"}
    body = {"type": "noop", "payload": {"n": 1}}

    async def client() -> None:
        nonlocal remaining
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits) as http:
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                response = await http.post("/v1/jobs", json=body)
                latencies.append((time.perf_counter() - started) * 1000)
                if response.status_code != 202:
                    raise RuntimeError(f"submit answered {response.status_code}: {response.text}")

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, time.perf_counter() - started


async def run(jobs: int, clients: int, access_log: bool) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="bench-http-") as tmp,
        gateway(Path(tmp), access_log=access_log) as gw,
    ):
        await submit_all(gw.url, WARMUP, clients)  # imports, pools, script loading
        gateway_cpu, own_cpu = cpu_s(gw.process.pid), time.process_time()
        latencies, wall_s = await submit_all(gw.url, jobs, clients)
        gateway_cpu = cpu_s(gw.process.pid) - gateway_cpu
        own_cpu = time.process_time() - own_cpu
    rate = jobs / wall_s
    p50, p99 = statistics.median(latencies), percentile(latencies, 99)
    print(
        f"{jobs} noop submits by {clients} concurrent clients through one gateway process "
        f"(access log {'on' if access_log else 'off'}): {wall_s:.2f}s"
    )
    print(f"  latency ms: p50 {p50:.2f}  p99 {p99:.2f}  max {max(latencies):.2f}")
    print(f"  throughput: {rate:.0f} submits/s")
    print(
        f"  CPU busy: gateway {100 * gateway_cpu / wall_s:.0f}%, "
        f"clients {100 * own_cpu / wall_s:.0f}% (of one core each)"
    )
    print(f"http_submit_per_s={rate:.0f} p50_ms={p50:.2f} p99_ms={p99:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--access-log", action="store_true", help="log each request (info)")
    args = parser.parse_args()
    asyncio.run(run(args.jobs, args.clients, args.access_log))


if __name__ == "__main__":
    main()
