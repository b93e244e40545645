"""The README's walk-through ("Five minutes over HTTP") runs as written, so it cannot drift
from the code.

Its fenced blocks are taken from README.md in order and played as a reader would:

- a `sh` block that is `[VAR=value ...] make run` is the first terminal: `conveyor run` is
  started (or stopped with Ctrl-C and started again) with those variables, in a directory of
  its own that stands for the clone (its `.venv` links to this interpreter's environment);
- every other `sh` block is typed into the second terminal: one bash, so variables and
  background jobs carry from one block to the next, run with `set -eo pipefail`, so any
  command that fails fails the test;
- a `python` block whose first line is `# name.py` is saved as that file;
- `text` blocks show output: their `event:` lines must be events the real run printed.

Nothing is substituted but the ports (the README's 8001 for the local web server; the
gateway's comes from `.conveyor/env` as the README reads it). What the walk-through promises
about the stack is asserted too: the same key and ports after the restart, private files,
a clean stop, and JSON logs without terminal escape codes when the output is a pipe.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import stat
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conveyor.process import free_port
from tests.fixtures.processes import REPO, conveyor_env
from tests.fixtures.stack import RunningStack

pytestmark = pytest.mark.integration

WALKTHROUGH = "## Five minutes over HTTP"
MAKE_RUN = re.compile(r"^((?:[A-Z_]+=\S+ +)*)make run$")
FILE_BLOCK = re.compile(r"^# (\S+\.py)\n")
BLOCK_DEADLINE_S = 60.0


@dataclass
class Block:
    lang: str
    text: str


def walkthrough() -> list[Block]:
    readme = (REPO / "README.md").read_text()
    assert WALKTHROUGH + "\n" in readme, f"README.md has no {WALKTHROUGH!r} section"
    section = readme.split(WALKTHROUGH + "\n", 1)[1].split("\n## ", 1)[0]
    fenced = re.finditer(r"^```(\w*)\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)
    return [Block(match[1], match[2]) for match in fenced]


class Terminal:
    """One bash fed a block at a time: each is sourced from a file, so a command that reads
    its standard input cannot swallow the next block, and ends with a marker line."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd = cwd
        self.proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its background jobs share its group: stopped with it
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.run("set -eo pipefail")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def run(self, script: str) -> str:
        path = self.cwd / f".block-{uuid.uuid4().hex[:8]}.sh"
        path.write_text(script)
        marker = f"__block_done_{uuid.uuid4().hex}__"
        assert self.proc.stdin is not None
        self.proc.stdin.write(f". {path}; echo {marker}\n")
        self.proc.stdin.flush()
        output: list[str] = []
        while True:
            try:
                line = self._lines.get(timeout=BLOCK_DEADLINE_S)
            except queue.Empty:
                pytest.fail(f"no end within {BLOCK_DEADLINE_S}s of:\n{script}\n--- so far:\n"
                            + "\n".join(output))
            if line is None:
                pytest.fail(f"the shell stopped (a command failed) in:\n{script}\n--- output:\n"
                            + "\n".join(output))
            if line == marker:
                path.unlink()
                return "\n".join(output)
            output.append(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self._reader.join(timeout=10)


class FirstTerminal:
    """`make run` as `conveyor run`, started and restarted in the clone."""

    def __init__(self, cwd: Path, port: int) -> None:
        self.cwd = cwd
        self.port = port
        self.runs: list[RunningStack] = []

    @property
    def current(self) -> RunningStack:
        return self.runs[-1]

    def make_run(self, assignments: dict[str, str]) -> RunningStack:
        if self.runs:
            self.stop(signal.SIGINT)  # Ctrl-C
        env = conveyor_env(
            **assignments,
            CONVEYOR_PORT=str(self.port),
            CONVEYOR_CONSUMERS="1",
            CONVEYOR_SHUTDOWN_GRACE_S="5",
            PYTHONUNBUFFERED="1",
        )
        proc = subprocess.Popen(
            [str(self.cwd / ".venv" / "bin" / "conveyor"), "run"],
            cwd=self.cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self.runs.append(RunningStack(proc))
        self.current.wait_for(r"conveyor: press Ctrl-C to stop", deadline_s=90)
        return self.current

    def stop(self, signum: int) -> None:
        run = self.current
        if run.proc.poll() is None:
            run.proc.send_signal(signum)
        try:
            assert run.exit_code(deadline_s=60) == 0, run.output()
        finally:
            run.close()

    def kill_leftovers(self) -> None:
        for run in self.runs:
            if run.proc.poll() is None:
                run.proc.kill()
                run.proc.wait()
            for pid in run.child_pids().values():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
            run.close()


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A directory standing for a fresh clone after `make run` made its `.venv`."""
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    assert (tmp_path / ".venv" / "bin" / "conveyor").exists(), "conveyor is not installed"
    return tmp_path


@pytest.fixture
def terminals(clone: Path) -> Iterator[tuple[FirstTerminal, Terminal]]:
    first = FirstTerminal(clone, free_port())
    second = Terminal(clone, conveyor_env())
    try:
        yield first, second
    finally:
        second.close()
        first.kill_leftovers()


def started(run: RunningStack) -> dict[str, str]:
    return {
        "key": run.wait_for(r"API key (\S+)", 1)[1],
        "redis": run.wait_for(r"started redis pid=\d+ url=(\S+)", 1)[1],
        "s3": run.wait_for(r"started s3 pid=\d+ endpoint=(\S+)", 1)[1],
    }


def events_in(output: str) -> list[str]:
    lines = output.splitlines()
    return [line.removeprefix("event: ") for line in lines if line.startswith("event:")]


@pytest.mark.timeout(300)
def test_the_walkthrough_runs_as_written(
    clone: Path, terminals: tuple[FirstTerminal, Terminal]
) -> None:
    first, second = terminals
    files_port = free_port()
    outputs: list[str] = []
    shown_events: set[str] = set()
    stacks: list[dict[str, str]] = []
    for block in walkthrough():
        text = re.sub(r"\b8001\b", str(files_port), block.text)
        if block.lang == "sh" and (make_run := MAKE_RUN.match(text.strip())):
            assignments = dict(pair.split("=", 1) for pair in make_run[1].split())
            stacks.append(started(first.make_run(assignments)))
        elif block.lang == "sh":
            assert stacks, "the walk-through types commands before it starts the stack"
            outputs.append(second.run(text))
        elif block.lang == "python" and (name := FILE_BLOCK.match(text)):
            (clone / name[1]).write_text(text)
        elif block.lang == "text":
            shown_events |= set(events_in(text))
        else:
            pytest.fail(f"a {block.lang!r} block the test does not know how to play:\n{text}")

    assert len(stacks) == 2 and len(outputs) == 6, (len(stacks), outputs)
    _, watched, cancelled, ingested, from_python, own_handler = outputs

    # 3. Submitted, answered at once, watched to its end.
    assert watched.splitlines()[0] in ("queued", "running"), watched
    seen = events_in(watched)
    assert seen[0] == "snapshot" and seen[-1] == "job.succeeded", watched
    assert "job.progress" in seen
    assert shown_events <= set(seen), "the README shows events the real stream does not have"
    # 4. The cancel answered, and the job ended cancelled.
    assert cancelled.splitlines()[0] in ("cancelled", "requested"), cancelled
    assert cancelled.splitlines()[-1] == "cancelled", cancelled
    # 5. The file went through S3 and came back byte for byte.
    assert ingested.splitlines() == ["succeeded", "the same bytes"], ingested
    # 6. The client followed the job to its end.
    python_lines = from_python.splitlines()
    assert python_lines[-1] == "succeeded", from_python
    assert [line.split()[0] for line in python_lines[:-1]][-1] == "job.succeeded"
    # 7. The stack restarted with the handler ran it; the CLI waited for it.
    greeted = own_handler.splitlines()
    assert len(greeted[0]) == 32, own_handler  # the job's id
    ended = [line for line in greeted if " job.succeeded " in line]
    assert len(ended) == 1 and 'result={"greeting": "hello, Ada"}' in ended[0], own_handler
    # and a worker of the reader's own, joined through .conveyor/env, drained and stopped
    assert "4 functions (noop, sleep, ingest_url, greet)" in own_handler, own_handler

    # The restart changed nothing a reader relies on, and it was a clean one.
    assert stacks[0] == stacks[1]
    data = clone / ".conveyor"
    for private in (data / "env", data / "api-key"):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    assert first.runs[1].wait_for(r"dashboard (http://\S+)", 1)[1] == (
        f"http://127.0.0.1:{first.port}/?key={stacks[1]['key']}"
    )
    first.stop(signal.SIGTERM)
    for run in first.runs:
        stopped = [line for line in run.lines if line.startswith("conveyor: stopped ")]
        assert stopped and all(re.fullmatch(r"conveyor: stopped \S+ pid=\d+", s) for s in stopped)
        for line in run.lines:  # a pipe, not a terminal: JSON lines, never colour codes
            assert "\x1b" not in line
            if line.startswith("{"):
                assert "\\u001b" not in line and "color_message" not in json.loads(line)
