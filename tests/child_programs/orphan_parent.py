"""A stand-in worker for the orphan test: starts one child and prints the child's pid.

    python -m tests.child_programs.orphan_parent command|process start|running

`start`: the pid is printed as soon as the child exists (it may still be setting itself up:
the race with a parent dying early). `running`: the child prints it (or, for a command, the
program says it), so it is surely past its setup. The test then SIGKILLs this process and
checks that the child does not outlive it.
"""

from __future__ import annotations

import asyncio
import sys
import time

from consumers.children import run_command, run_process
from tests.child_programs import funcs


def report(pid: int | str) -> None:
    print(pid, flush=True)


async def main(mode: str, when: str) -> None:
    if mode == "command" and when == "start":
        await run_command(["sleep", "60"], on_start=report)
    elif mode == "command":
        await run_command(["sh", "-c", "echo $$; exec sleep 60"], on_line=report)
    elif when == "start":
        await run_process(time.sleep, 60, on_start=report)
    else:
        await run_process(funcs.report_and_sleep, 60)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
