"""A media pipeline's handlers, one of each kind (README, "Writing handlers"). From the
repository's root, beside `make run`:

    .venv/bin/conveyor worker --handlers examples.media
    .venv/bin/conveyor submit transcode --payload '{"seconds": 2}' --wait

`transcode` runs ffmpeg where it is installed, else `examples/fake_ffmpeg.py`, which prints
the same kind of progress.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, ClassVar

from consumers.context import JobContext
from consumers.handlers import BUILTIN_FUNCTIONS, declare

FFMPEG = shutil.which("ffmpeg")
FAKE_FFMPEG = [sys.executable, str(Path(__file__).with_name("fake_ffmpeg.py"))]
PROGRESS = re.compile(r"time=(\d+):(\d+):(\d+(?:\.\d+)?)")


async def transcode(ctx: JobContext, seconds: float = 2.0) -> dict[str, Any]:
    """A program's work (ffmpeg, a model's CLI): `ctx.run_command` runs it in its own process
    group under kernel limits, kills it on a cancel or the job's timeout, and hands each line
    it prints to `on_line`, here turned into progress."""
    out = Path(tempfile.mkdtemp(prefix="transcode-")) / "out.mp4"
    if FFMPEG:
        source = f"testsrc=duration={seconds}:size=320x240:rate=25"
        argv = [FFMPEG, "-y", "-f", "lavfi", "-i", source, str(out)]
    else:
        argv = [*FAKE_FFMPEG, "-o", str(out), "--duration", str(seconds)]

    async def on_line(line: str) -> None:
        if match := PROGRESS.search(line):
            hours, minutes, secs = match.groups()
            done_s = int(hours) * 3600 + int(minutes) * 60 + float(secs)
            await ctx.progress(min(100.0, 100 * done_s / seconds), stage="transcoding")

    await ctx.run_command(argv, on_line=on_line, memory_mb=2048, cpu_s=600)
    return {"bytes": out.stat().st_size}


def checksum(ctx: Any, size_mb: int = 64) -> dict[str, Any]:
    """Blocking library calls (a sync HTTP client, hashing, file IO): a plain `def` runs in a
    thread of the worker, and `ctx.progress` is called without `await`."""
    digest = hashlib.sha256()
    block = b"\0" * 2**20
    for i in range(size_mb):
        digest.update(block)
        ctx.progress(100 * (i + 1) / size_mb, stage="hashing")
    return {"sha256": digest.hexdigest()}


def count_primes(limit: int) -> int:
    """CPU-bound Python: it holds the GIL, so a thread would still slow the worker."""
    sieve = bytearray([1]) * (limit + 1)
    sieve[0:2] = b"\0\0"
    for n in range(2, int(limit**0.5) + 1):
        if sieve[n]:
            sieve[n * n :: n] = bytes(len(range(n * n, limit + 1, n)))
    return sum(sieve)


async def analyse(ctx: JobContext, limit: int = 2_000_000) -> dict[str, Any]:
    """CPU-bound work in a child process with its own memory and CPU limits."""
    return {"primes": await ctx.run_process(count_primes, limit, memory_mb=512, cpu_s=60)}


class WorkerSettings:
    functions: ClassVar[list[Any]] = [
        *BUILTIN_FUNCTIONS,
        transcode,
        checksum,  # a plain def, listed as it is
        declare(analyse, timeout=120),
    ]
