"""`POST /v1/jobs` through one gateway process, beside its floor, driven by wrk.

    .venv/bin/python -m bench.http_submit [--rounds 3] [--seconds 8] [--connections 32]
        [--py-spy OUT]

Starts its own redis-server, one gateway process (as `conveyor gateway` runs it, access
lines off) and the floor (`bench.submit_floor`: a bare ASGI app on the same uvicorn +
httptools + uvloop stack that parses the body, runs one Lua script and answers 202), both
on that Redis. wrk (Debian's; installed with apt-get when missing) with one thread POSTs
`noop` jobs (`bench/http_submit.lua`) to each in turn, alternating, `--rounds` times: at
`--connections` (32) for the rate and at 8 for the latency. Prints one line per run and
last `gateway_rps=N floor_rps=M ratio=R p50_ms=… p99_ms=… p99_8c_ms=… floor_p99_8c_ms=…
gateway_cpu_us=…` (medians; the p50/p99 are the gateway's at `--connections`, `gateway_cpu_us`
its CPU per submit). `--py-spy OUT` records the gateway during one more run (py-spy, raw
collapsed stacks) and prints where a submit's time goes. wrk, Redis and both servers share
the machine's cores.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from conveyor.embedded_redis import EmbeddedRedis
from conveyor.process import ManagedProcess, free_port, port_open, wait_until

REPO = Path(__file__).resolve().parents[1]
API_KEY = "bench-key"
TENANT = "bench"
QUEUE = "bench"
LUA = Path(__file__).resolve().parent / "http_submit.lua"
WRK_LINE = re.compile(r"^WRK (.*)$", re.MULTILINE)


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
                CONVEYOR_HOST="127.0.0.1",
                CONVEYOR_PORT=str(port),
                CONVEYOR_LOG_LEVEL="warning",
                CONVEYOR_ACCESS_LOG="true" if access_log else "false",
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


def ensure_wrk() -> str:
    wrk = shutil.which("wrk")
    if wrk is None:
        print("installing wrk (apt-get)", flush=True)
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        subprocess.run([*sudo, "apt-get", "update", "-q"], check=True)
        subprocess.run([*sudo, "apt-get", "install", "-y", "-q", "wrk"], check=True)
        wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("bench.http_submit needs wrk (apt-get install wrk)")
    return wrk


@contextlib.contextmanager
def floor(workdir: Path, redis_url: str) -> Iterator[Gateway]:
    """bench.submit_floor under uvicorn, on the given Redis."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env["CONVEYOR_REDIS_URL"] = redis_url
    argv = [
        sys.executable, "-m", "uvicorn", "bench.submit_floor:app_from_env", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
        "--no-access-log", "--loop", "uvloop", "--http", "httptools",
    ]  # fmt: skip
    process = ManagedProcess(
        "floor", argv, env=env, cwd=REPO, log_path=workdir / "floor.log"
    ).start()
    try:
        wait_until(lambda: port_open("127.0.0.1", port) or not process.alive(), 30, "floor")
        if not process.alive():
            raise RuntimeError(f"floor exited:\n{process.log_tail()}")
        yield Gateway(f"http://127.0.0.1:{port}", redis_url, process)
    finally:
        process.stop()


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float  # the server's CPU per request


def wrk_run(
    wrk: str, server: Gateway, connections: int, seconds: float, bulk: int | None = None
) -> Run:
    """One wrk run (one thread) against `server`'s POST /v1/jobs, or with `bulk` its POST
    /v1/jobs/bulk of that many jobs a request (`rps` is then requests, not jobs)."""
    before = cpu_s(server.process.pid)
    env = {**os.environ, "BENCH_API_KEY": API_KEY}
    if bulk:
        env["BENCH_BULK"] = str(bulk)
    done = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s", str(LUA),
         server.url + ("/v1/jobs/bulk" if bulk else "/v1/jobs")],
        check=True, capture_output=True, text=True, env=env,
    )  # fmt: skip
    cpu = cpu_s(server.process.pid) - before
    found = WRK_LINE.search(done.stdout)
    if found is None:
        raise RuntimeError(f"wrk printed no figures:\n{done.stdout}{done.stderr}")
    figures: Mapping[str, int] = {
        k: int(v) for k, v in (item.split("=") for item in found.group(1).split())
    }
    if figures["non2xx"] or figures["errors"]:
        raise RuntimeError(f"not every submit was accepted: {found.group(0)}\n{done.stdout}")
    requests = figures["requests"]
    return Run(
        rps=requests / (figures["duration_us"] / 1e6),
        p50_ms=figures["p50_us"] / 1000,
        p99_ms=figures["p99_us"] / 1000,
        cpu_us=cpu / requests * 1e6,
    )


def show(name: str, connections: int, run: Run) -> None:
    print(
        f"  {name:7} c={connections:<3} {run.rps:7.0f}/s  p50 {run.p50_ms:6.2f} ms  "
        f"p99 {run.p99_ms:6.2f} ms  CPU {run.cpu_us:5.0f} us/submit",
        flush=True,
    )


def profile(wrk: str, gw: Gateway, connections: int, seconds: float, out: Path) -> None:
    """py-spy on the gateway during one wrk run; then the shares of its samples."""
    from bench.submit_profile import breakdown, ensure_py_spy

    spy = subprocess.Popen(
        [ensure_py_spy(), "record", "--pid", str(gw.process.pid), "--duration",
         str(int(seconds)), "--rate", "250", "--format", "raw", "--output", str(out),
         "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(1)  # py-spy attaches
        show("py-spy", connections, wrk_run(wrk, gw, connections, seconds - 1))
    finally:
        spy.wait(timeout=60)
    print(breakdown(out))


def run(rounds: int, seconds: float, connections: int, spy_out: Path | None) -> None:
    wrk = ensure_wrk()
    with (
        tempfile.TemporaryDirectory(prefix="bench-http-") as tmp,
        gateway(Path(tmp), as_deployed=True) as gw,
        floor(Path(tmp), gw.redis_url) as fl,
    ):
        for server in (gw, fl):  # imports, pools, scripts, caches
            wrk_run(wrk, server, connections, 1)
        runs: dict[tuple[str, int], list[Run]] = {}
        for n in range(rounds):
            print(f"round {n + 1}", flush=True)
            for c in (connections, 8):
                for name, server in (("gateway", gw), ("floor", fl)):
                    result = wrk_run(wrk, server, c, seconds)
                    runs.setdefault((name, c), []).append(result)
                    show(name, c, result)
        if spy_out is not None:
            profile(wrk, gw, connections, seconds, spy_out)

    def median(name: str, c: int, field: str) -> float:
        return statistics.median(getattr(r, field) for r in runs[(name, c)])

    gateway_rps = median("gateway", connections, "rps")
    floor_rps = median("floor", connections, "rps")
    print(
        f"gateway_rps={gateway_rps:.0f} floor_rps={floor_rps:.0f} "
        f"ratio={gateway_rps / floor_rps:.2f} "
        f"p50_ms={median('gateway', connections, 'p50_ms'):.2f} "
        f"p99_ms={median('gateway', connections, 'p99_ms'):.2f} "
        f"p99_8c_ms={median('gateway', 8, 'p99_ms'):.2f} "
        f"floor_p99_8c_ms={median('floor', 8, 'p99_ms'):.2f} "
        f"gateway_cpu_us={median('gateway', connections, 'cpu_us'):.0f} "
        f"floor_cpu_us={median('floor', connections, 'cpu_us'):.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--py-spy", type=Path, help="record the gateway to this file too")
    args = parser.parse_args()
    run(args.rounds, args.seconds, args.connections, args.py_spy)


if __name__ == "__main__":
    main()
