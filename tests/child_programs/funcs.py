"""Functions for `run_process` in tests: importable by the child, stdlib only."""

from __future__ import annotations

import os
import time


def add(a: int, b: int) -> int:
    return a + b


def fail(message: str) -> None:
    raise ValueError(message)


class Unpicklable(Exception):
    def __init__(self, a: int, b: int) -> None:  # pickle calls cls(*args): one arg is missing
        super().__init__(f"{a}-{b}")


def fail_unpicklably() -> None:
    raise Unpicklable(1, 2)


def allocate(mb: int) -> int:
    """Touch `mb` MiB; the size, if it could."""
    return len(bytearray(mb * 2**20))


def burn() -> None:
    while True:
        pass


def sleep(seconds: float) -> None:
    time.sleep(seconds)


def report_and_sleep(seconds: float) -> None:
    """Print this process's pid on stdout (the worker's, inherited), then sleep."""
    print(os.getpid(), flush=True)
    time.sleep(seconds)
