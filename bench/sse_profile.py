"""Where a gateway's time per SSE delivery goes, from py-spy's collapsed stacks.

    .venv/bin/python -m bench.sse_profile OUT [--deliveries N] [--cpu-us US]

bench.sse_compare --py-spy OUT records the gateway (`py-spy record --nonblocking --format
raw`: Python frames only, without pausing the process) and prints this. Each sample of the
event loop's thread is put in the first part its stack names, looking from the innermost
frame out, so time in C under a Python frame (the interpreter, a dict lookup) counts for that
frame's part. A sample whose innermost frame is on a `transport.write(` line is the socket
write: the transport's C code and the kernel's loopback send, which is all the floor does.
Samples taken while the loop waits in epoll are idle and left out.

py-spy samples wall time, and its sampling rate is nominal: the shares are what to read. The
microseconds divide the run's measured gateway CPU per delivery by those shares.
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
from collections import Counter
from pathlib import Path

IDLE = "idle (waiting in epoll)"
WRITE = "the socket write (transport.write: C and kernel)"
FRAME = re.compile(r"^(?P<function>.*) \((?P<path>[^()]*):(?P<line>\d+)\)$")

# (part, substrings of a frame), tried from the innermost frame out; the first hit wins.
PARTS: list[tuple[str, tuple[str, ...]]] = [
    ("uvicorn (its ASGI send, HTTP framing)", ("uvicorn/",)),
    (
        "Starlette's middleware send wrappers",
        ("starlette/_exception_handler.py", "starlette/middleware/"),
    ),
    (
        "encoding (pydantic JSON, SSE frame)",
        ("pydantic", "sse_starlette/event.py", "Outgoing.frame", "event_message"),
    ),
    ("sse-starlette (the response)", ("sse_starlette/",)),
    ("driving the ASGI send (direct_writer)", ("direct_writer",)),
    ("the transport writer (gateway.sse.transport)", ("gateway/sse/transport.py",)),
    ("the hub's lanes (gateway.sse.lane)", ("gateway/sse/lane.py",)),
    ("subscriber bookkeeping (push, SentIds)", ("gateway/sse/subscriber.py",)),
    (
        "hub loop (read, targets, throttle, dispatch)",
        ("gateway/sse/hub.py", "gateway/sse/throttle.py"),
    ),
    ("parsing events (Event.from_entry)", ("schemas/",)),
    ("Redis client (XREAD reply)", ("redis/",)),
    ("metrics (prometheus-client)", ("prometheus_client/",)),
    ("the rest of the gateway", ("gateway/", "fastapi/", "starlette/")),
    ("event loop (asyncio, anyio)", ("asyncio/", "anyio/")),
]
# The innermost frame while the loop waits for I/O: uvloop's run_forever is C, so a sample
# there ends at asyncio.run's frame.
IDLE_FRAMES = ("Runner.run (asyncio/runners.py", "select (selectors.py")
OTHER = "other"


@functools.cache
def source_line(path: str, line: int) -> str:
    """The text of a frame's line, looked up along sys.path as py-spy shortens paths."""
    for root in ["", *sys.path]:
        candidate = Path(root, path)
        if candidate.is_file():
            lines = candidate.read_text(errors="replace").splitlines()
            return lines[line - 1] if 0 < line <= len(lines) else ""
    return ""


def part_of(frames: list[str]) -> str:
    if frames[-1].startswith(IDLE_FRAMES):
        return IDLE
    match = FRAME.match(frames[-1])
    if match and "transport.write(" in source_line(match["path"], int(match["line"])):
        return WRITE
    for frame in reversed(frames):
        for part, needles in PARTS:
            if any(needle in frame for needle in needles):
                return part
    return OTHER


def breakdown(path: Path) -> Counter[str]:
    """Samples of the event loop's thread per part (idle included, under IDLE)."""
    parts: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        # The loop's thread: uvicorn's asyncio.run. Others (anyio's worker threads) idle.
        if "asyncio/runners.py" not in stack:
            continue
        parts[part_of(stack.split(";"))] += int(count)
    return parts


def print_breakdown(parts: Counter[str], deliveries: int, cpu_us: float) -> None:
    busy = sum(n for part, n in parts.items() if part != IDLE)
    if not busy:
        print("py-spy: no busy samples")
        return
    print(
        f"  where the gateway's busy time went (py-spy, {busy} samples over {deliveries} "
        f"deliveries; us: the shares of the {cpu_us:.1f} us of CPU per delivery measured):"
    )
    for part in [WRITE] + [part for part, _ in PARTS] + [OTHER]:
        n = parts.get(part, 0)
        if n:
            print(f"    {part:<50} {100 * n / busy:5.1f}%  {cpu_us * n / busy:5.2f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", type=Path, help="py-spy record --format raw output")
    parser.add_argument("--deliveries", type=int, default=0)
    parser.add_argument("--cpu-us", type=float, default=0.0, help="CPU per delivery measured")
    args = parser.parse_args()
    print_breakdown(breakdown(args.raw), args.deliveries, args.cpu_us)


if __name__ == "__main__":
    main()
