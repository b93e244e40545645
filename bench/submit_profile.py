"""Where a gateway's time per submit goes, from py-spy's raw (collapsed) stacks.

    .venv/bin/python -m bench.submit_profile OUT   # OUT from `bench.http_submit --py-spy OUT`

Each sample is put in the group of its innermost frame that belongs to a known package
(the order of GROUPS), so "redis-py" is the client's own work and not the socket write it
calls, which is "socket and event loop".
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

# (group, substrings of a frame's file path), first match wins within a frame.
GROUPS: list[tuple[str, tuple[str, ...]]] = [
    ("pydantic (validation, serialisation)", ("pydantic/", "pydantic_core/")),
    ("prometheus_client (metrics)", ("prometheus_client/",)),
    ("logging", ("logging/", "pythonjsonlogger/")),
    ("json", ("json/",)),
    ("redis-py", ("redis/",)),
    ("FastAPI", ("fastapi/",)),
    ("Starlette", ("starlette/",)),
    ("uvicorn (HTTP protocol)", ("uvicorn/",)),
    ("Conveyor: gateway", ("gateway/", "conveyor/")),
    ("Conveyor: producer", ("producer/",)),
    ("Conveyor: schemas", ("schemas/",)),
    ("tracing (opentelemetry)", ("opentelemetry/",)),
    ("hmac, secrets, hashlib, base64", ("hmac.py", "secrets.py", "hashlib.py", "base64.py")),
    ("worker threads (anyio's run_sync)", ("anyio/", "threading.py", "queue.py", "concurrent/")),
    ("socket and event loop", ("asyncio/", "uvloop", "socket.py", "selectors.py")),
]


def ensure_py_spy() -> str:
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if found is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "py-spy"], check=True)
        found = shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if found is None:
        raise SystemExit("py-spy is missing (pip install py-spy)")
    return found


def group_of(stack: str) -> str:
    for frame in reversed(stack.split(";")):
        # "function (path/to/file.py:line)": py-spy gives site-packages' files from the
        # package's directory on, so each needle must start a path component.
        path = "/" + frame.rpartition(" (")[2]
        for name, needles in GROUPS:
            if any("/" + needle in path for needle in needles):
                return name
    return "other"


def breakdown(path: Path) -> str:
    counts: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            counts[group_of(stack)] += int(n)
    total = sum(counts.values()) or 1
    lines = [f"where the gateway's busy samples went ({total} samples):"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in counts.most_common()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(breakdown(Path(sys.argv[1])))
