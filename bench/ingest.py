"""Benchmark: `ingest_url` of a large body from a local HTTP server into the embedded SeaweedFS,
beside a direct minio `put_object` of the same bytes to the same server, in one run.

    .venv/bin/python -m bench.ingest [--size-mib 1024] [--part-mib 8]

Each side runs in its own child process, so its peak RSS (VmHWM) is its own. The HTTP origin
runs in this process, in a thread, writing a repeated 1 MiB block (cheap to serve, so what is
measured is the ingest). Last line:
`ingest_mb_s=X direct_put_mb_s=Y ratio=R ingest_peak_rss_mib=Z` (MB = 10^6 bytes).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

BLOCK = bytes(range(256)) * 4096  # 1 MiB
ACCESS_KEY = "bench"
SECRET_KEY = "bench-secret-key"
BUCKET = "bench"


class _Origin(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        size = int(self.path.rsplit("/", 1)[-1])
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        view = memoryview(BLOCK)
        sent = 0
        while sent < size:
            n = min(len(BLOCK), size - sent)
            self.wfile.write(view[:n])
            sent += n

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _GeneratedBody(io.RawIOBase):
    """`size` bytes of the repeated block, produced as read: nothing is held."""

    def __init__(self, size: int) -> None:
        self._left = size
        self._offset = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        out = bytearray()
        while len(out) < n:
            take = min(n - len(out), len(BLOCK) - self._offset)
            out += BLOCK[self._offset : self._offset + take]
            self._offset = (self._offset + take) % len(BLOCK)
        self._left -= n
        return bytes(out)


@dataclass
class _Ctx:
    """The parts of a JobContext that `ingest_url` uses."""

    storage: Any
    settings: Any
    job_id: str = "bench"
    attempt: int = 1
    reports: list[float | None] = field(default_factory=list)

    async def progress(
        self, percent: float | None = None, stage: str | None = None, message: str | None = None
    ) -> None:
        self.reports.append(percent)

    def get(self, name: str, default: Any = None) -> Any:
        return self.settings if name == "settings" else default

    def __getitem__(self, name: str) -> Any:
        return self.get(name)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _storage(endpoint: str, part_mib: int, parallel: int = 0) -> Any:
    from consumers.storage import Storage

    storage = Storage(
        endpoint=endpoint,
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        bucket=BUCKET,
        part_size=part_mib * 1024 * 1024,
    )
    if parallel:
        storage.parallel_parts = parallel
    return storage


def child_ingest(endpoint: str, url: str, part_mib: int, parallel: int) -> dict[str, Any]:
    from consumers.handlers.ingest import ingest_url
    from consumers.storage import JobStorage
    from schemas.settings import Settings

    storage = _storage(endpoint, part_mib, parallel)
    settings = Settings(_env_file=None, ingest_allowed_hosts=["127.0.0.1"])  # type: ignore[call-arg]
    ctx = _Ctx(JobStorage(storage, "bench", "ingest"), settings)
    started = time.perf_counter()
    result = asyncio.run(ingest_url(ctx, url, name="ingest.bin"))  # type: ignore[arg-type]
    elapsed = time.perf_counter() - started
    storage.close()
    return {
        "seconds": elapsed,
        "size": result["size"],
        "cpu_s": _cpu_s(),
        "peak_rss_mib": _peak_rss_mib(),
    }


def child_direct(endpoint: str, size: int, part_mib: int) -> dict[str, Any]:
    storage = _storage(endpoint, part_mib)
    started = time.perf_counter()
    # minio is imported by consumers.storage alone; its client is borrowed for the reference.
    storage._client.put_object(
        BUCKET,
        "bench/direct/put.bin",
        _GeneratedBody(size),
        size,
        part_size=part_mib * 1024 * 1024,
    )
    elapsed = time.perf_counter() - started
    storage.close()
    return {"seconds": elapsed, "size": size, "cpu_s": _cpu_s(), "peak_rss_mib": _peak_rss_mib()}


def _run_child(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.ingest", "--child", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"child {args[0]} failed:\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--part-mib", type=int, default=8)
    parser.add_argument(
        "--parallel-parts", type=int, default=0, help="parts in flight (default: Storage's)"
    )
    parser.add_argument("--rounds", type=int, default=1, help="alternate the two this often")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        kind, endpoint, target, part, parallel = args.child
        if kind == "ingest":
            print(json.dumps(child_ingest(endpoint, target, int(part), int(parallel))))
        else:
            print(json.dumps(child_direct(endpoint, int(target), int(part))))
        return

    from conveyor.embedded_s3 import EmbeddedS3

    size = args.size_mib * 1024 * 1024
    origin = ThreadingHTTPServer(("127.0.0.1", 0), _Origin)
    origin.daemon_threads = True
    threading.Thread(target=origin.serve_forever, args=(0.05,), daemon=True).start()
    url = f"http://127.0.0.1:{origin.server_address[1]}/bytes/{size}"
    part, parallel = str(args.part_mib), str(args.parallel_parts)
    ingest: list[dict[str, Any]] = []
    direct: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as tmp:
        s3 = EmbeddedS3(Path(tmp), access_key=ACCESS_KEY, secret_key=SECRET_KEY, bucket=BUCKET)
        with s3:
            for _ in range(args.rounds):
                direct.append(_run_child("direct", s3.endpoint, str(size), part, parallel))
                ingest.append(_run_child("ingest", s3.endpoint, url, part, parallel))
                for name, runs in (("direct put", direct), ("ingest", ingest)):
                    r = runs[-1]
                    print(
                        f"{name:>10}: {size / r['seconds'] / 1e6:7.1f} MB/s "
                        f"({r['seconds']:.2f}s, {r['cpu_s']:.1f}s CPU, "
                        f"peak RSS {r['peak_rss_mib']:.1f} MiB)",
                        flush=True,
                    )
    origin.shutdown()
    origin.server_close()

    ingest_mb_s = size / min(r["seconds"] for r in ingest) / 1e6
    direct_mb_s = size / min(r["seconds"] for r in direct) / 1e6
    peak = max(r["peak_rss_mib"] for r in ingest)
    print(
        f"ingest_mb_s={ingest_mb_s:.1f} direct_put_mb_s={direct_mb_s:.1f} "
        f"ratio={ingest_mb_s / direct_mb_s:.2f} ingest_peak_rss_mib={peak:.1f}"
    )


if __name__ == "__main__":
    main()
