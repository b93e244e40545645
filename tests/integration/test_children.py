"""consumers/children.py with real processes: results, limits, cancellation, no orphans.

Nothing waits by sleeping: a child's end is watched through a pidfd (readable once it exited),
each wait with a deadline. Here pid 1 does not reap orphans, so an orphan that died stays a
zombie: exited is what "gone" means for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing.forkserver
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from consumers.children import (
    CommandFailed,
    ProcessFailed,
    kill_all_children,
    live_children,
    run_command,
    run_process,
    warm_up,
)
from schemas.errors import ResourceExceeded
from tests.child_programs import funcs

REPO = Path(__file__).resolve().parents[2]
PROGRAMS = REPO / "tests" / "child_programs"
FAKE_FFMPEG = [sys.executable, str(REPO / "examples" / "fake_ffmpeg.py")]
GROUP = ["sh", "-c", "sleep 60 & echo $!; wait"]  # a child with a child of its own


def exited(pidfd: int, within_s: float) -> bool:
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(int(within_s * 1000)))


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


@pytest.fixture
def pidfds() -> Iterator[Callable[[int], int]]:
    """Open a pidfd on a process (while it surely is the one meant), closed after the test."""
    opened: list[int] = []

    def open_pidfd(pid: int) -> int:
        opened.append(os.pidfd_open(pid))
        return opened[-1]

    yield open_pidfd
    for fd in opened:
        os.close(fd)


class Started:
    """on_start / on_line callbacks that record pids and let the test wait for them."""

    def __init__(self, open_pidfd: Callable[[int], int], expect: int = 1) -> None:
        self.open_pidfd, self.expect = open_pidfd, expect
        self.pids: list[int] = []
        self.fds: list[int] = []
        self.event = asyncio.Event()

    def __call__(self, pid: int) -> None:
        self.pids.append(pid)
        self.fds.append(self.open_pidfd(pid))
        if len(self.pids) >= self.expect:
            self.event.set()

    def line(self, text: str) -> None:  # GROUP's first line: the grandchild's pid
        if text.isdigit():
            self(int(text))

    async def wait(self) -> None:
        await asyncio.wait_for(self.event.wait(), 30)


# 1. Results and exceptions


async def test_run_process_returns_the_result_and_reraises_the_exception() -> None:
    await warm_up()
    assert await run_process(funcs.add, 2, 3) == 5
    with pytest.raises(ValueError) as caught:
        await run_process(funcs.fail, "boom")
    assert str(caught.value) == "boom"
    assert "in the child process" in caught.value.__notes__[0]
    with pytest.raises(ProcessFailed, match="Unpicklable: 1-2"):
        await run_process(funcs.fail_unpicklably)
    assert live_children() == []


# 2, 3. Limits of run_process


async def test_run_process_over_its_memory_limit_is_resource_exceeded() -> None:
    assert await run_process(funcs.allocate, 20, memory_mb=100) == 20 * 2**20
    started = time.monotonic()
    with pytest.raises(ResourceExceeded, match="memory limit of 100 MB"):
        await run_process(funcs.allocate, 500, memory_mb=100)
    assert time.monotonic() - started < 2


async def test_run_process_over_its_cpu_limit_is_resource_exceeded() -> None:
    started = time.monotonic()
    with pytest.raises(ResourceExceeded, match=r"CPU limit of 1 s .*SIGXCPU"):
        await run_process(funcs.burn, cpu_s=1)
    assert time.monotonic() - started < 4


# 4. Cancellation kills the group within a second


@pytest.mark.parametrize("kind", ["command", "process"])
async def test_cancel_kills_the_child_within_a_second(
    kind: str, pidfds: Callable[[int], int]
) -> None:
    started = Started(pidfds)
    if kind == "command":
        job = run_command(["sleep", "60"], on_start=started)
    else:
        job = run_process(funcs.sleep, 60, on_start=started)
    task = asyncio.create_task(job)
    await started.wait()
    cancelled_at = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - cancelled_at < 1
    assert exited(started.fds[0], 0)
    if kind == "command":  # reaped too: no zombie left behind
        with pytest.raises(ChildProcessError):
            os.waitpid(started.pids[0], os.WNOHANG)  # noqa: ASYNC222 (WNOHANG: never blocks)
    assert live_children() == []


async def test_cancel_while_the_child_starts_kills_it() -> None:
    """Cancelled before its pid is known: the child is still stopped and reaped."""
    await run_process(funcs.add, 1, 2)  # the forkserver is up: its children can be listed
    server = getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid")  # noqa: B009
    task = asyncio.create_task(run_process(funcs.sleep, 60, on_start=lambda pid: None))
    await asyncio.sleep(0)  # one step: it has asked for the start (which takes ms), not more
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with open(f"/proc/{server}/task/{server}/children") as f:
        assert f.read().split() == []
    assert live_children() == []


async def test_cancel_kills_what_the_child_started(pidfds: Callable[[int], int]) -> None:
    started = Started(pidfds, expect=2)
    task = asyncio.create_task(run_command(GROUP, on_start=started, on_line=started.line))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert exited(started.fds[0], 0)  # the child: reaped before the task ended
    assert exited(started.fds[1], 1)  # its child: signalled, gone at once (not ours to wait on)


async def test_cancel_escalates_to_sigkill(pidfds: Callable[[int], int]) -> None:
    started = Started(pidfds)
    argv = ["sh", "-c", "trap '' TERM; echo ready; sleep 60"]  # sh and sleep ignore SIGTERM
    ready = asyncio.Event()
    task = asyncio.create_task(run_command(argv, on_start=started, on_line=lambda _: ready.set()))
    await asyncio.wait_for(ready.wait(), 30)
    cancelled_at = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert 0.4 < time.monotonic() - cancelled_at < 1.5
    assert exited(started.fds[0], 0)


async def test_a_second_cancel_skips_the_grace(pidfds: Callable[[int], int]) -> None:
    """Cancelled again while waiting out SIGTERM's grace: SIGKILL at once, still reaped."""
    started = Started(pidfds)
    argv = ["sh", "-c", "trap '' TERM; echo ready; sleep 60"]
    ready = asyncio.Event()
    task = asyncio.create_task(run_command(argv, on_start=started, on_line=lambda _: ready.set()))
    await asyncio.wait_for(ready.wait(), 30)
    cancelled_at = time.monotonic()
    task.cancel()
    await asyncio.sleep(0)  # one step: the task is in its cleanup, waiting out the grace
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - cancelled_at < 0.4
    assert exited(started.fds[0], 0)
    with pytest.raises(ChildProcessError):
        os.waitpid(started.pids[0], os.WNOHANG)  # noqa: ASYNC222 (WNOHANG: never blocks)


# 5. An ffmpeg-style command


@pytest.mark.parametrize("async_on_line", [False, True])
async def test_fake_ffmpeg_progress_reaches_on_line(tmp_path: Path, async_on_line: bool) -> None:
    lines: list[str] = []

    async def collect(line: str) -> None:
        lines.append(line)

    output = tmp_path / "out.mp4"
    result = await run_command(
        [*FAKE_FFMPEG, "-o", str(output), "--duration", "0.4"],
        on_line=collect if async_on_line else lines.append,
        memory_mb=500,
        cpu_s=10,
    )
    progress = [line for line in lines if line.startswith("frame=")]
    assert len(progress) == 10, lines
    assert progress[-1].startswith("frame=   10") and "time=00:00:00.40" in progress[-1]
    assert lines[0].startswith("ffmpeg version") and "progress=end" in lines
    assert result.returncode == 0 and result.tail[-1] == "progress=end"
    assert output.stat().st_size == 1024


async def test_fake_ffmpeg_over_its_memory_limit(tmp_path: Path) -> None:
    argv = [*FAKE_FFMPEG, "-o", str(tmp_path / "out"), "--duration", "0", "--allocate-mb"]
    await run_command([*argv, "50"], memory_mb=200)
    with pytest.raises(ResourceExceeded, match=r"memory limit of 200 MB.*Cannot allocate memory"):
        await run_command([*argv, "500"], memory_mb=200)


@pytest.mark.parametrize("dies", [True, False], ids=["killed-by-sigxcpu", "exits-on-sigxcpu"])
async def test_fake_ffmpeg_over_its_cpu_limit(tmp_path: Path, dies: bool) -> None:
    argv = [*FAKE_FFMPEG, "-o", str(tmp_path / "out"), "--burn"]
    lines: list[str] = []
    started = time.monotonic()
    with pytest.raises(ResourceExceeded, match="CPU limit of 1 s") as caught:
        await run_command(
            argv if dies else [*argv, "--exit-on-xcpu"], on_line=lines.append, cpu_s=1
        )
    assert time.monotonic() - started < 4
    assert ("SIGXCPU" in str(caught.value)) is dies
    assert any(line.startswith("frame=") for line in lines)


async def test_a_failing_command_is_command_failed(tmp_path: Path) -> None:
    with pytest.raises(CommandFailed, match="exited with code 3") as caught:
        await run_command(["sh", "-c", "echo one; echo two >&2; exit 3"], cwd=str(tmp_path))
    assert caught.value.returncode == 3 and caught.value.tail == ("one", "two")
    with pytest.raises(FileNotFoundError):
        await run_command(["no-such-program-here"])


async def test_on_line_raising_stops_the_command(pidfds: Callable[[int], int]) -> None:
    started = Started(pidfds)

    def refuse(line: str) -> None:
        raise RuntimeError(f"refused {line}")

    with pytest.raises(RuntimeError, match="refused hello"):
        await run_command(["sh", "-c", "echo hello; sleep 60"], on_start=started, on_line=refuse)
    assert exited(started.fds[0], 0)


# 6. No orphans when the worker is SIGKILLed


@pytest.mark.parametrize("when", ["start", "running"])
@pytest.mark.parametrize("mode", ["command", "process"])
def test_a_child_does_not_outlive_a_sigkilled_worker(
    mode: str, when: str, pidfds: Callable[[int], int]
) -> None:
    """`running`: PR_SET_PDEATHSIG (through the forkserver for run_process: the worker dies,
    the server sees its end of the "alive" pipe close and exits, its child gets SIGKILL).
    `start`: the child may still be setting up, the getppid check's case."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.child_programs.orphan_parent", mode, when],
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    try:
        assert worker.stdout is not None
        assert exited(worker.stdout.fileno(), 30), "no child pid within 30 s"
        child = int(worker.stdout.readline())
        watched = [pidfds(child)]
        parent = parent_of(child)
        if mode == "command":
            assert parent == worker.pid
        else:  # worker -> forkserver -> child: the server must go, and the child with it
            assert parent_of(parent) == worker.pid
            watched.append(pidfds(parent))
        assert not exited(watched[0], 0)
        worker.kill()
        worker.wait(10)
        assert all(exited(fd, 5) for fd in watched)
    finally:
        with contextlib.suppress(ProcessLookupError):
            worker.kill()
        worker.wait(10)
        if worker.stdout is not None:
            worker.stdout.close()


# 7. The worker's shutdown


async def test_kill_all_children_kills_every_group(pidfds: Callable[[int], int]) -> None:
    command_started, grandchild, process_started = (Started(pidfds) for _ in range(3))
    command = asyncio.create_task(
        run_command(GROUP, on_start=command_started, on_line=grandchild.line)
    )
    process = asyncio.create_task(run_process(funcs.sleep, 60, on_start=process_started))
    for started in (command_started, grandchild, process_started):
        await started.wait()
    assert sorted(live_children()) == sorted(command_started.pids + process_started.pids)
    kill_all_children()
    for started in (command_started, grandchild, process_started):
        assert exited(started.fds[0], 1)
    with pytest.raises(CommandFailed, match="killed by SIGKILL"):
        await command
    with pytest.raises(ProcessFailed, match="killed at shutdown"):
        await process
    assert live_children() == []


async def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="memory_mb"):
        await run_command(["true"], memory_mb=0)
    with pytest.raises(ValueError, match="cpu_s"):
        await run_process(funcs.add, 1, 2, cpu_s=-1)


async def test_signals_are_the_default_in_the_command() -> None:
    """Python ignores SIGPIPE; the wrapper must not hand that on to the program."""
    result = await run_command(["sh", "-c", "yes | head -n 2"])
    assert result.tail == ("y", "y")
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN  # ours is untouched
