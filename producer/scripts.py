"""The Lua scripts: every `scripts/*.lua` file, includes expanded, called one way.

Each script file opens with a header naming its KEYS and ARGV. `--@include NAME` pulls in
`scripts/includes/NAME.lua`; before the first include goes `lua_constants()`: every name that
Python and Lua must spell alike (the consumer group, the job events key suffix, the status
and event names, the state machine's tables), generated from `schemas`, so Redis refuses
exactly what Python refuses and a rename cannot leave a script behind. A test checks that the
scripts spell none of those names themselves.

A script carries only the library it uses: the constants and include functions that its own
code names, directly or through another function it carries. Redis runs a script's whole
text on every call, so each `local function` defined there is a closure made and each table
a table built per call, and a function nobody calls still costs its compile at SCRIPT LOAD.

Calls go out as pipelined EVALSHAs (`run_many`): one round trip for any number of calls, and
the script is loaded only when Redis answers NOSCRIPT; `run`, one call, is a plain EVALSHA on
a single Redis; `run_in_order` streams calls on one connection, each result handed back as it
comes (a bulk submit).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncGenerator, Iterable
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

from schemas.events import EventType, StepState
from schemas.keys import (
    BACKLOG_SUFFIX,
    CALLBACKS_SUFFIX,
    CONSUMER_GROUP,
    FAIR_SUFFIX,
    FINISHED_SUFFIX,
    FLOW_GROUP,
    FLOW_SUFFIX,
    GATE_SUFFIX,
    GATES_SUFFIX,
    JOB_CHILDREN_SUFFIX,
    JOB_EVENTS_SUFFIX,
    JOB_STEPS_SUFFIX,
    LEAD_SUFFIX,
    ORDERED_LEAD,
    PAUSED_SUFFIX,
    TASK_CANCEL_CHILDREN,
    TASK_CHILD_ENDED,
)
from schemas.priority import DEFAULT_PRIORITY
from schemas.status import TERMINAL, TRANSITIONS, JobStatus

SCRIPT_DIR = Path(__file__).parent / "scripts"
GENERATED = "-- generated from schemas: do not edit here\n"
INCLUDE = re.compile(r"^--@include (\w+)\s*$", re.MULTILINE)
SCRIPT_NAMES = tuple(sorted(path.stem for path in SCRIPT_DIR.glob("*.lua")))

Call = tuple[str, list[str], list[Any]]
"""One script call: (script name, KEYS, ARGV)."""
T = TypeVar("T")


def _lua_table(pairs: dict[str, str]) -> str:
    return "{" + ", ".join(f"{name} = {value}" for name, value in pairs.items()) + "}"


def lua_constants() -> str:
    """What the scripts must spell as Python does, as Lua locals: `RUNNING` for each status,
    `JOB_STARTED` for each event, `GROUP`, `FLOW_GROUP`, the job key suffixes (`JOB_EVENTS_SUFFIX`
    ...), `TRANSITIONS`, `TERMINAL`.
    Plain locals, not tables: this preamble runs on every call, and a table of the names
    cost the drain 0.75% more Redis instructions per job (bench.redis_cost)."""
    names = [(s.name, s.value) for s in JobStatus]
    names += [(f"JOB_{e.name}", e.value) for e in EventType]
    names += [(f"STEP_{s.name}", s.value) for s in StepState]
    transitions = {
        source.value: _lua_table({t.value: "true" for t in sorted(TRANSITIONS[source])})
        for source in sorted(TRANSITIONS, key=lambda s: s.value)
    }
    return (
        "-- generated from schemas: do not edit here\n"
        f"local GROUP = '{CONSUMER_GROUP}'\n"
        f"local JOB_EVENTS_SUFFIX = '{JOB_EVENTS_SUFFIX}'\n"
        f"local JOB_STEPS_SUFFIX = '{JOB_STEPS_SUFFIX}'\n"
        f"local JOB_CHILDREN_SUFFIX = '{JOB_CHILDREN_SUFFIX}'\n"
        f"local FLOW_GROUP = '{FLOW_GROUP}'\n"
        f"local FLOW_SUFFIX = '{FLOW_SUFFIX}'\n"
        f"local CALLBACKS_SUFFIX = '{CALLBACKS_SUFFIX}'\n"
        f"local PAUSED_SUFFIX = '{PAUSED_SUFFIX}'\n"
        f"local FINISHED_SUFFIX = '{FINISHED_SUFFIX}'\n"
        f"local BACKLOG_SUFFIX = '{BACKLOG_SUFFIX}'\n"
        f"local LEAD_SUFFIX = '{LEAD_SUFFIX}'\n"
        f"local FAIR_SUFFIX = '{FAIR_SUFFIX}'\n"
        f"local GATE_SUFFIX = '{GATE_SUFFIX}'\n"
        f"local GATES_SUFFIX = '{GATES_SUFFIX}'\n"
        f"local ORDERED_LEAD = '{ORDERED_LEAD}'\n"
        f"local DEFAULT_PRIORITY = {DEFAULT_PRIORITY}\n"
        f"local TASK_CHILD_ENDED = '{TASK_CHILD_ENDED}'\n"
        f"local TASK_CANCEL_CHILDREN = '{TASK_CANCEL_CHILDREN}'\n"
        + "".join(f"local {name} = '{value}'\n" for name, value in names)
        + f"local TRANSITIONS = {_lua_table(transitions)}\n"
        f"local TERMINAL = {_lua_table({s.value: 'true' for s in sorted(TERMINAL)})}\n"
    )


def include_source(name: str) -> str:
    return (SCRIPT_DIR / "includes" / f"{name}.lua").read_text()


def library_source() -> str:
    """What every script starts with: the generated constants and `common.lua`."""
    return lua_constants() + include_source("common")


TOP_LOCAL = re.compile(r"^local (?:function )?([\w, ]+?)\s*(?:[=(]|$)")
NAME = re.compile(r"[A-Za-z_]\w*")
COMMENT = re.compile(r"--.*$", re.MULTILINE)


def definitions(library: str) -> list[tuple[set[str], str]]:
    """The library's top-level statements, each `local NAME = ...` or `local function NAME`
    with the comment lines just above it and whatever follows up to the next one: (names it
    defines, its text). Text before the first definition is one with no names."""
    chunks: list[tuple[set[str], list[str]]] = [(set(), [])]
    pending: list[str] = []  # comment and blank lines, which belong to what follows them
    for line in library.splitlines(keepends=True):
        top = TOP_LOCAL.match(line)
        if top:
            chunks.append(({n.strip() for n in top.group(1).split(",")}, [*pending, line]))
            pending = []
        elif line.startswith("--") or not line.strip():
            pending.append(line)
        else:
            chunks[-1][1].extend([*pending, line])
            pending = []
    chunks[-1][1].extend(pending)
    return [(names, "".join(lines)) for names, lines in chunks]


def _names(code: str) -> set[str]:
    return set(NAME.findall(COMMENT.sub("", code)))


def shaken(library: str, code: str) -> str:
    """`library` less the definitions that `code` does not need: those it names, and those
    they name, transitively. Order is kept, since a Lua local is seen only after it."""
    chunks = definitions(library)
    wanted = _names(code)
    kept = [not names for names, _ in chunks]
    grew = True
    while grew:
        grew = False
        for i, (names, text) in enumerate(chunks):
            if not kept[i] and names & wanted:
                kept[i] = grew = True
                wanted |= _names(text)
    return "".join(text for (_, text), keep in zip(chunks, kept, strict=True) if keep)


@cache
def script_source(name: str) -> str:
    """The full text of script `name` as Redis runs it: its includes expanded in place of the
    first `--@include` line, the generated constants first, less what it does not use."""
    text = (SCRIPT_DIR / f"{name}.lua").read_text()
    includes = INCLUDE.findall(text)
    if not includes:
        return text
    first = INCLUDE.search(text)
    assert first is not None
    head, code = text[: first.start()], INCLUDE.sub("", text[first.start() :])
    constants = lua_constants().removeprefix(GENERATED)
    library = constants + "".join(include_source(include) for include in includes)
    return head + GENERATED + shaken(library, code) + code.lstrip("\n")


@cache
def script_sha(name: str) -> str:
    return hashlib.sha1(script_source(name).encode()).hexdigest()


class Scripts:
    """The scripts, called on one Redis client as `await scripts.run(name, keys, args)`, or
    several in one round trip with `run_many`."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        # A cluster client routes by key and may be handed any client class: only the plain
        # single-server client takes `run`'s short path.
        self._single = type(redis) is Redis

    async def run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        if not self._single:
            (result,) = await self.run_many([(name, keys, args)])
            return result
        # One call on one Redis: a plain EVALSHA, without a pipeline's objects and checks
        # (a third of a submit's time in redis-py, bench.http_submit).
        try:
            return await self._redis.evalsha(script_sha(name), len(keys), *keys, *args)  # type: ignore[misc]
        except NoScriptError:
            await self._redis.script_load(script_source(name))
            return await self._redis.evalsha(script_sha(name), len(keys), *keys, *args)  # type: ignore[misc]

    async def run_many(self, calls: list[Call]) -> list[Any]:
        """Several script calls `(name, keys, args)` in one pipeline: one round trip, where
        redis-py's pipelined `Script` costs two (it asks SCRIPT EXISTS before each pipeline,
        and that question waits at Redis behind whatever other work is queued there). Calls
        that answer NOSCRIPT (Redis restarted, or flushed its scripts) never ran: the script
        is loaded and just those are sent again. The others ran once and are not repeated.
        An error reply of a call is raised, after every call has run."""
        results = await self._run_all(calls)
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    async def _run_all(self, calls: list[Call]) -> list[Any]:
        """`run_many`'s results, an error reply in its call's place."""
        results = await self._pipeline(calls)
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:
            for name in {calls[i][0] for i in missing}:
                await self._redis.script_load(script_source(name))
            again = await self._pipeline([calls[i] for i in missing])
            for i, result in zip(missing, again, strict=True):
                results[i] = result
        return results

    async def run_in_order(
        self, calls: Iterable[tuple[Call, T]]
    ) -> AsyncGenerator[tuple[T, Any], None]:
        """`run_many` for a caller with work to do on each result: each call, tagged, is sent
        on one connection as soon as `calls` makes it, and each result is handed back with
        its tag, in order, as soon as it is in. So Redis runs the first calls while the
        caller makes the next ones, and the caller works on the first results while Redis
        runs the rest (a bulk submit packed, run and rendered its calls one stage after the
        other). One connection keeps the calls in their order, and each script is loaded on
        it (SCRIPT LOAD, a no-op for a script Redis has) before its first call, so that no
        call answers NOSCRIPT after a later one ran: after a restart, a bulk's first calls
        would otherwise run after its others. (A SCRIPT FLUSH in the middle of a bulk is
        the one way left: the calls it left unrun run again, after the rest.) An error
        reply comes back in its call's place, as the exception: the caller answers for that
        call alone, since the calls before and after it ran. On a cluster, it is
        `run_many` with the same results. Close it (`contextlib.aclosing`) when stopping
        early."""
        if not self._single:
            listed = list(calls)
            results = await self._run_all([call for call, _ in listed])
            for (_, tag), result in zip(listed, results, strict=True):
                yield tag, result
            return
        pool = self._redis.connection_pool
        connection = await pool.get_connection()
        sent: list[tuple[Call, T] | None] = []  # None: a SCRIPT LOAD's reply
        loaded: set[str] = set()
        try:
            for call, tag in calls:
                name, keys, args = call
                if name not in loaded:
                    loaded.add(name)
                    load = connection.pack_command("SCRIPT", "LOAD", script_source(name))
                    await connection.send_packed_command(load, check_health=False)
                    sent.append(None)
                packed = connection.pack_command(
                    "EVALSHA", script_sha(name), len(keys), *keys, *args
                )
                await connection.send_packed_command(packed, check_health=False)
                sent.append((call, tag))
            unrun: list[tuple[Call, T]] = []  # NOSCRIPT: scripts flushed since their load
            for item in sent:
                try:
                    result = await connection.read_response()
                except ResponseError as exc:  # the connection is still in step
                    result = exc
                if item is None:
                    continue
                if isinstance(result, NoScriptError):
                    unrun.append(item)
                else:
                    yield item[1], result
        except BaseException:
            await connection.disconnect()  # replies may still be on their way
            raise
        finally:
            await pool.release(connection)
        if unrun:
            again = await self._run_all([call for call, _ in unrun])
            for (_, tag), result in zip(unrun, again, strict=True):
                yield tag, result

    async def _pipeline(self, calls: list[Call]) -> list[Any]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for name, keys, args in calls:
                pipe.evalsha(script_sha(name), len(keys), *keys, *args)
            return list(await pipe.execute(raise_on_error=False))
