"""A handler's heavy work in a child process: `run_process(fn, *args)` and `run_command(argv)`.

Why a child: a memory or CPU limit, and a kill, hold only for a whole process.

Limits are the kernel's, never polled. `memory_mb` is RLIMIT_AS (address space: an allocation
over it fails with ENOMEM). For run_process it is what the call may add to the fresh child's
address space at its start (interpreter, preloaded modules, fn's module: ~45 MB here, not
counted); a command starts from nothing, so there it is the total (set it generously for
many-threaded programs: each thread reserves address space). `cpu_s`, rounded up to whole
seconds, is RLIMIT_CPU with soft = cpu_s, hard = cpu_s + 1: SIGXCPU, then SIGKILL.
A breach is ResourceExceeded (permanent) and is recognised, without guessing, as:
- run_process: MemoryError out of fn (memory); death by SIGXCPU, or by a SIGKILL we did not
  send while cpu_s is set (the hard limit, if fn ignored SIGXCPU: a stranger's SIGKILL is
  taken for it too).
- run_command, from the exit status and wait4's rusage: death by SIGXCPU, or any failure after
  CPU time >= CPU_SEEN * cpu_s (ffmpeg catches SIGXCPU and exits 255; wait4's time runs behind
  the kernel's); a failure whose output says it could not allocate memory (ENOMEM's "Cannot
  allocate memory", MemoryError, std::bad_alloc, "out of memory").
Not recognised (a retryable ProcessFailed / CommandFailed instead): a MemoryError that fn
catches itself, a crash on ENOMEM that says nothing (SIGSEGV, SIGABRT). Max RSS is no help:
wait4 reports the worker's own RSS for a child forked from it. No cgroup: here cgroup v2 has
no memory controller (cgroup v1's is writable only because these tests run as root).

Process groups: each child leads its own session, so a signal to the group reaches all it
started. On cancellation (a user cancel, the job's timeout) the group gets SIGTERM, SIGKILL
after GRACE_S; the child is reaped, then CancelledError goes on. When a child exits, what it
left in its group is killed. kill_all_children() is for the worker's shutdown (and atexit).

No orphans: each child sets PR_SET_PDEATHSIG(SIGKILL), then checks getppid for a parent that
died first. run_process: children come from the multiprocessing forkserver (single-threaded, so
its fork is safe; warm, a child starts in milliseconds). The server exits when the worker dies,
unless a child still holds the worker's end of its "alive" pipe, which children inherit: a
child lets go of it only after PDEATHSIG is set, so worker death -> server exit -> child killed.
run_command: a tiny `python -I -S` wrapper sets the limits and PDEATHSIG, then execs the program
(preexec_fn is unsafe in a process with threads; prlimit from outside after spawn would race
the program), so the worker's event loop thread is the parent, and reaps it with wait4.
PDEATHSIG reaches the direct child only: what it starts itself survives a SIGKILLed worker
unless it dies with it (cancel and shutdown kill the whole group).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import errno
import inspect
import math
import multiprocessing
import multiprocessing.forkserver
import multiprocessing.process
import os
import pickle
import re
import resource
import select
import shutil
import signal
import subprocess
import sys
import traceback
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

from schemas.errors import ResourceExceeded, RetryableError

T = TypeVar("T")
GRACE_S = 0.5  # between SIGTERM and SIGKILL of a cancelled child's group
TAIL_LINES = 20
# The kernel checks RLIMIT_CPU against CPU time charged by the tick, which runs ahead of the
# exact time wait4 reports: here a child got SIGXCPU at 1 s having used 0.80-0.99 s by wait4.
CPU_SEEN = 0.75
PR_SET_PDEATHSIG = 1
Limits = list[tuple[int, int, int]]  # (resource, soft, hard)
_CTX = multiprocessing.get_context("forkserver")
_ALLOC_FAILED = re.compile(
    r"cannot allocate memory|out of memory|memoryerror|bad_alloc|failed to allocate", re.I
)
# Run by `python -I -S -c` before exec: argv = parent pid, limits "res:soft:hard,...", program.
_WRAPPER = f"""\
import ctypes, os, resource, signal, sys
ppid, limits, *argv = sys.argv[1:]
L = ctypes.c_ulong
if ctypes.CDLL(None).prctl({PR_SET_PDEATHSIG}, L({int(signal.SIGKILL)}), L(0), L(0), L(0)) \\
        or os.getppid() != int(ppid):
    os._exit(125)
for spec in filter(None, limits.split(",")):
    res, soft, hard = map(int, spec.split(":"))
    resource.setrlimit(res, (soft, hard))
for sig in (signal.SIGPIPE, signal.SIGXFSZ):
    signal.signal(sig, signal.SIG_DFL)
try:
    os.execvp(argv[0], argv)
except OSError as exc:
    print(f"{{argv[0]}}: {{exc.strerror}}", file=sys.stderr)
    os._exit(127)
"""


class ProcessFailed(RetryableError):
    """run_process's child ended without a result, or fn raised what cannot be sent back."""


class CommandFailed(RetryableError):
    """run_command's program exited nonzero or was killed, within its limits."""

    def __init__(self, argv: Sequence[str], returncode: int, tail: Sequence[str]) -> None:
        self.argv, self.returncode, self.tail = list(argv), returncode, tuple(tail)
        last = "\n".join(self.tail[-5:])
        super().__init__(f"{self.argv[0]} {_how(returncode)}" + (f":\n{last}" if last else ""))

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.argv, self.returncode, self.tail)


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    tail: tuple[str, ...]  # the last TAIL_LINES lines of stdout and stderr (merged)
    cpu_s: float  # user + system CPU time (the wrapper's ~20 ms included)


@dataclass(eq=False)
class _Child:
    pid: int
    exit_fd: int  # readable once the child exited: a pidfd, or the forkserver's sentinel
    pinned: bool  # its pid cannot be reused yet (ours to reap): signalling it alone is safe
    killed: bool = False  # we signalled it: its death is no breach


_live: dict[int, _Child] = {}
_starter: list[ThreadPoolExecutor] = []
_preload: list[str] = []


def live_children() -> list[int]:
    """The pids (and process group ids) of the children running now."""
    return list(_live)


def kill_all_children() -> None:
    """SIGKILL every live child's process group. Synchronous, for signal handlers and exit."""
    for child in list(_live.values()):
        child.killed = True
        _signal_group(child, signal.SIGKILL)


atexit.register(kill_all_children)


async def warm_up(preload: Sequence[str] = ()) -> None:
    """Start the forkserver (importing `preload` there once, e.g. handler modules, instead of
    in every child) and one child, so that the first job does not pay for it."""
    _preload.extend(preload)
    await run_process(os.getpid)


async def run_process(
    fn: Callable[..., T],
    *args: Any,
    memory_mb: int | None = None,
    cpu_s: float | None = None,
    on_start: Callable[[int], Any] | None = None,
) -> T:
    """fn(*args) in a fresh child process; its result, or its exception re-raised here."""
    limits = _limits(memory_mb, cpu_s)
    r, w = os.pipe()
    os.set_blocking(r, False)
    if not _starter:  # starts are serialized: one thread does multiprocessing's bookkeeping
        _starter.append(ThreadPoolExecutor(1, thread_name_prefix="conveyor-children"))
    loop = asyncio.get_running_loop()
    try:
        (proc, pid), cancelled = await _despite_cancel(
            loop.run_in_executor(_starter[0], _start, w, fn, args, limits)
        )
    except BaseException:
        os.close(r)
        raise
    child = _track(pid, proc.sentinel, pinned=False)
    chunks: list[bytes] = []

    async def keep(data: bytes) -> None:
        chunks.append(data)

    try:
        if cancelled:
            raise asyncio.CancelledError
        if on_start is not None:
            on_start(child.pid)
        await _pump(child, r, keep)
    finally:
        try:
            await _end(child)
        finally:
            os.close(r)
            code = proc.exitcode
            proc.close()
    name = getattr(fn, "__qualname__", repr(fn))
    try:
        reply = pickle.loads(b"".join(chunks)) if chunks else None
    except Exception as exc:
        raise ProcessFailed(f"{name}: its reply could not be unpickled: {exc!r}") from exc
    if reply is None:
        if cpu_s is not None and not child.killed and code in (-signal.SIGXCPU, -signal.SIGKILL):
            raise ResourceExceeded(f"{name}: CPU limit of {cpu_s:g} s exceeded ({_how(code)})")
        why = " (killed at shutdown)" if child.killed else ""
        raise ProcessFailed(f"{name}: its process {_how(code or 0)} without a result{why}")
    if reply[0] == "ok":
        return reply[1]  # type: ignore[no-any-return]
    if reply[0] == "memory":
        raise ResourceExceeded(f"{name}: memory limit of {memory_mb} MB exceeded ({reply[1]})")
    _, exc_bytes, summary, remote_tb = reply
    try:
        error = pickle.loads(exc_bytes) if exc_bytes is not None else None
    except Exception:
        error = None
    if not isinstance(error, BaseException):
        error = ProcessFailed(f"{name} raised {summary}")
    error.add_note(f"in the child process:\n{remote_tb}")
    raise error


def _start(
    w: int, fn: Callable[..., Any], args: tuple[Any, ...], limits: Limits
) -> tuple[BaseProcess, int]:
    """In the starter thread: a forkserver child running _child_main, writing to `w`."""
    out = Connection(w, readable=False)  # owns w; pickled to the child as a passed fd
    try:
        server = multiprocessing.forkserver._forkserver
        if getattr(server, "_forkserver_pid", None) is None:  # not started yet
            _CTX.set_forkserver_preload(["__main__", __name__, *_preload])
        server.ensure_running()
        proc = _CTX.Process(
            target=_child_main,
            args=(out, fn, args, limits, getattr(server, "_forkserver_pid", None)),
            name=f"conveyor:{getattr(fn, '__qualname__', 'fn')}",
        )
        proc.start()
        # Out of multiprocessing's bookkeeping: it would poll (and so read) the exit status
        # from another thread, and join it at exit; we reap it, and kill it at exit.
        getattr(multiprocessing.process, "_children", set()).discard(proc)
        return proc, proc.pid or 0
    finally:
        out.close()


def _child_main(
    out: Connection, fn: Callable[..., Any], args: tuple[Any, ...], limits: Limits, server: Any
) -> None:
    """The child: dies with the forkserver, session leader, within its limits; runs fn."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if server is not None and os.getppid() != server:
        os._exit(125)  # the server died before PDEATHSIG was set: we are already an orphan
    # Only now let go of our copy of the worker's end of the server's "alive" pipe: while we
    # hold it the server cannot exit (so it was alive when PDEATHSIG was set); once we let go,
    # the worker's death closes the pipe, the server exits, and PDEATHSIG kills us.
    fs = multiprocessing.forkserver._forkserver
    alive = getattr(fs, "_forkserver_alive_fd", None)
    if alive is not None:
        os.close(alive)
        fs._forkserver_alive_fd = None  # type: ignore[attr-defined]
    os.setsid()
    with open("/proc/self/statm") as f:  # memory_mb is on top of what the child maps already
        mapped = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    for res, soft, hard in limits:
        base = mapped if res == resource.RLIMIT_AS else 0
        resource.setrlimit(res, _clamp(res, soft + base, hard + base))
    try:
        data = pickle.dumps(("ok", fn(*args)), pickle.HIGHEST_PROTOCOL)
    except MemoryError as exc:
        memory = any(res == resource.RLIMIT_AS for res, _, _ in limits)
        data = pickle.dumps(("memory", repr(exc))) if memory else _error_reply(exc)
    except Exception as exc:
        data = _error_reply(exc)
    view = memoryview(data)
    while view:
        view = view[os.write(out.fileno(), view) :]
    out.close()


def _error_reply(exc: BaseException) -> bytes:
    try:
        exc_bytes: bytes | None = pickle.dumps(exc)
    except Exception:
        exc_bytes = None
    summary = f"{type(exc).__qualname__}: {exc}"
    return pickle.dumps(("error", exc_bytes, summary, traceback.format_exc()))


async def run_command(
    argv: Sequence[str],
    *,
    on_line: Callable[[str], Any] | None = None,
    memory_mb: int | None = None,
    cpu_s: float | None = None,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
    on_start: Callable[[int], Any] | None = None,
) -> CommandResult:
    """Run a program, handing each line of its stdout and stderr (merged; a line ends at \\n
    or \\r, as ffmpeg's progress does; blank lines are skipped) to `on_line` (awaited if it
    returns an awaitable). CommandFailed if it fails, ResourceExceeded over a limit."""
    argv = list(argv)
    if not argv:
        raise ValueError("run_command needs a program to run")
    path = None if env is None else env.get("PATH", os.defpath)
    if "/" not in argv[0] and shutil.which(argv[0], path=path) is None:
        raise FileNotFoundError(errno.ENOENT, "no such program on PATH", argv[0])
    limits = [(res, *_clamp(res, soft, hard)) for res, soft, hard in _limits(memory_mb, cpu_s)]
    spec = ",".join(":".join(map(str, limit)) for limit in limits)
    r, w = os.pipe()
    try:  # from this (the event loop's) thread: PDEATHSIG follows the thread that forks
        proc = _spawn(argv, spec, w, cwd, env)
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    os.set_blocking(r, False)
    child = _track(proc.pid, os.pidfd_open(proc.pid), pinned=True)
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    rest = b""

    async def line(raw: bytes) -> None:
        text = raw.decode(errors="replace")
        tail.append(text)
        if on_line is not None and inspect.isawaitable(result := on_line(text)):
            await result

    async def split(data: bytes) -> None:
        nonlocal rest
        *lines, rest = re.split(rb"\r\n|\r|\n", rest + data)
        for raw in filter(None, lines):
            await line(raw)

    try:
        if on_start is not None:
            on_start(child.pid)
        await _pump(child, r, split)
        if rest:
            await line(rest)
    finally:
        try:
            await _end(child)
        finally:
            os.close(r)
            code, usage = _reap(child)
            proc.returncode = code  # reaped: Popen must not wait for it again
    used = usage.ru_utime + usage.ru_stime
    if code == 0:
        return CommandResult(code, tuple(tail), used)
    if (
        not child.killed
        and cpu_s is not None
        and (code == -signal.SIGXCPU or used >= CPU_SEEN * cpu_s)
    ):
        raise ResourceExceeded(
            f"{argv[0]}: CPU limit of {cpu_s:g} s exceeded (used {used:.2f} s, {_how(code)})"
        )
    if not child.killed and memory_mb is not None and _ALLOC_FAILED.search("\n".join(tail)):
        raise ResourceExceeded(
            f"{argv[0]}: memory limit of {memory_mb} MB exceeded ({_how(code)}): {tail[-1]}"
        )
    raise CommandFailed(argv, code, tail)


def _spawn(
    argv: list[str], spec: str, out: int, cwd: str | None, env: Mapping[str, str] | None
) -> subprocess.Popen[bytes]:
    """The wrapper, leading a new session, writing to `out`; it execs argv within `spec`."""
    return subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", _WRAPPER, str(os.getpid()), spec, *argv],
        stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=cwd, env=env,
        start_new_session=True,
    )  # fmt: skip


def _reap(child: _Child) -> tuple[int, resource.struct_rusage]:
    """Its exit code and resource usage (it exited: this does not block)."""
    _, status, usage = os.wait4(child.pid, 0)
    os.close(child.exit_fd)
    return os.waitstatus_to_exitcode(status), usage


def _limits(memory_mb: int | None, cpu_s: float | None) -> Limits:
    limits: Limits = []
    if memory_mb is not None:
        if memory_mb <= 0:
            raise ValueError(f"memory_mb must be positive, not {memory_mb}")
        limits.append((resource.RLIMIT_AS, memory_mb << 20, memory_mb << 20))
    if cpu_s is not None:
        if cpu_s <= 0:
            raise ValueError(f"cpu_s must be positive, not {cpu_s}")
        limits.append((resource.RLIMIT_CPU, math.ceil(cpu_s), math.ceil(cpu_s) + 1))
    return limits


def _clamp(res: int, soft: int, hard: int) -> tuple[int, int]:
    """Within the hard limit this process has already: a child cannot raise it."""
    cap = resource.getrlimit(res)[1]
    return (soft, hard) if cap == resource.RLIM_INFINITY else (min(soft, cap), min(hard, cap))


def _how(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def _track(pid: int, exit_fd: int, pinned: bool) -> _Child:
    _live[pid] = child = _Child(pid, exit_fd, pinned)
    return child


def _signal_group(child: _Child, sig: int) -> None:
    try:
        os.killpg(child.pid, sig)
    except ProcessLookupError:  # not leading its group yet (a forkserver child before setsid)
        if child.pinned or not _ready(child.exit_fd):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, sig)
    except PermissionError:
        pass


async def _end(child: _Child) -> None:
    """Stop the child if it still runs (SIGTERM, SIGKILL after GRACE_S), and forget it. Leaves
    only once it exited, even when cancelled again meanwhile."""
    try:
        if not _ready(child.exit_fd):
            child.killed = True
            _signal_group(child, signal.SIGTERM)
            await _readable([child.exit_fd], GRACE_S)
    finally:
        if child.killed or not _ready(child.exit_fd):  # the group, or what is left of it
            _signal_group(child, signal.SIGKILL)
            _ready(child.exit_fd, -1)  # blocks briefly: a SIGKILLed process exits at once
        _live.pop(child.pid, None)


async def _pump(child: _Child, out: int, sink: Callable[[bytes], Awaitable[None]]) -> None:
    """Hand `sink` what the child writes to `out` until it exited; then kill what it left in its
    group and take what is already in the pipe (a descendant holding it must not hang us)."""
    data: bytes | None = None
    while child.exit_fd not in await _readable([child.exit_fd, *([out] if data != b"" else [])]):
        while data := _read(out):
            await sink(data)
    _signal_group(child, signal.SIGKILL)
    while data := _read(out):
        await sink(data)


def _read(fd: int) -> bytes | None:
    """What a non-blocking pipe holds: b"" at its end, None when empty for now."""
    try:
        return os.read(fd, 1 << 16)
    except BlockingIOError:
        return None


def _ready(fd: int, timeout_ms: int = 0) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(timeout_ms))


async def _readable(fds: list[int], within: float | None = None) -> set[int]:
    """Those of `fds` readable once one is, or `within` seconds passed."""
    loop = asyncio.get_running_loop()
    woke: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not woke.done():
            woke.set_result(None)

    for fd in fds:
        loop.add_reader(fd, wake)
    try:
        await asyncio.wait_for(woke, within)
    except TimeoutError:
        pass
    finally:
        for fd in fds:
            loop.remove_reader(fd)
    return {fd for fd in fds if _ready(fd)}


async def _despite_cancel(fut: asyncio.Future[T]) -> tuple[T, bool]:
    """`fut`'s result even if this task is cancelled meanwhile (a child being started must be
    known, to be stopped), and whether it was."""
    cancelled = False
    while True:
        try:
            return await asyncio.shield(fut), cancelled
        except asyncio.CancelledError:
            if fut.cancelled():
                raise
            cancelled = True
