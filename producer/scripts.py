"""The Lua scripts: loaded from `scripts/*.lua`, includes expanded, registered once.

Each script file opens with a header naming its KEYS and ARGV. `--@include NAME` pulls in
`scripts/includes/NAME.lua`; before the first include goes the transition table generated
from `schemas.status.TRANSITIONS`, so Redis enforces the state machine defined in Python.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from schemas.status import TERMINAL, TRANSITIONS

SCRIPT_DIR = Path(__file__).parent / "scripts"
INCLUDE = re.compile(r"^--@include (\w+)\s*$", re.MULTILINE)

SCRIPT_NAMES = (
    "submit",
    "start",
    "take",
    "progress",
    "renew",
    "succeed",
    "fail",
    "cancel",
    "cancelled",
    "retry",
    "promote",
    "reclaim",
)


def lua_state_machine() -> str:
    """`TRANSITIONS` and `TERMINAL` as Lua tables."""
    rows = []
    for source in sorted(TRANSITIONS, key=lambda s: s.value):
        targets = ", ".join(f"{t.value} = true" for t in sorted(TRANSITIONS[source]))
        rows.append(f"  {source.value} = {{{targets}}},")
    terminal = ", ".join(f"{s.value} = true" for s in sorted(TERMINAL))
    return (
        "-- generated from schemas.status: do not edit here\n"
        "local TRANSITIONS = {\n" + "\n".join(rows) + "\n}\n"
        f"local TERMINAL = {{{terminal}}}\n"
    )


def include_source(name: str) -> str:
    return (SCRIPT_DIR / "includes" / f"{name}.lua").read_text()


def library_source() -> str:
    """What every script starts with: the generated state machine and `common.lua`."""
    return lua_state_machine() + include_source("common")


@cache
def script_source(name: str) -> str:
    """The full text of script `name` as Redis runs it."""
    text = (SCRIPT_DIR / f"{name}.lua").read_text()
    preamble = [lua_state_machine()]

    def expand(match: re.Match[str]) -> str:
        body = include_source(match.group(1))
        return preamble.pop() + body if preamble else body

    return INCLUDE.sub(expand, text)


class Scripts:
    """The registered scripts of one Redis client, called as `await scripts.run(name, ...)`,
    or several in one round trip with `run_many`. Both send EVALSHA and load the script on
    NOSCRIPT (after a Redis restart, or on a fresh node)."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._scripts: dict[str, AsyncScript] = {
            name: redis.register_script(script_source(name)) for name in SCRIPT_NAMES
        }

    def __getitem__(self, name: str) -> AsyncScript:
        return self._scripts[name]

    async def run(
        self, name: str, keys: list[str], args: list[Any], client: Any | None = None
    ) -> Any:
        return await self._scripts[name](keys=keys, args=args, client=client)

    async def run_many(self, calls: list[tuple[str, list[str], list[Any]]]) -> list[Any]:
        """Several script calls `(name, keys, args)` in one pipeline: one round trip, where
        redis-py's pipelined `Script` costs two (it asks SCRIPT EXISTS before each pipeline,
        and that question waits at Redis behind whatever other work is queued there). Calls
        that answer NOSCRIPT (Redis restarted, or flushed its scripts) never ran: the script
        is loaded and just those are sent again. The others ran once and are not repeated.
        An error reply of a call is raised, after every call has run."""
        results = await self._pipeline(calls)
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:
            for name in {calls[i][0] for i in missing}:
                await self._redis.script_load(self._scripts[name].script)
            again = await self._pipeline([calls[i] for i in missing])
            for i, result in zip(missing, again, strict=True):
                results[i] = result
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    async def _pipeline(self, calls: list[tuple[str, list[str], list[Any]]]) -> list[Any]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for name, keys, args in calls:
                pipe.evalsha(self._scripts[name].sha, len(keys), *keys, *args)
            return list(await pipe.execute(raise_on_error=False))
