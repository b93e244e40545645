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

from schemas.status import TERMINAL, TRANSITIONS

SCRIPT_DIR = Path(__file__).parent / "scripts"
INCLUDE = re.compile(r"^--@include (\w+)\s*$", re.MULTILINE)

SCRIPT_NAMES = (
    "submit",
    "start",
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
    """The registered scripts of one Redis client, called as `await scripts.run(name, ...)`.

    redis-py's Script runs EVALSHA and loads the script on NOSCRIPT (after a Redis restart,
    or on a fresh node), in pipelines too.
    """

    def __init__(self, redis: Redis) -> None:
        self._scripts: dict[str, AsyncScript] = {
            name: redis.register_script(script_source(name)) for name in SCRIPT_NAMES
        }

    def __getitem__(self, name: str) -> AsyncScript:
        return self._scripts[name]

    async def run(
        self, name: str, keys: list[str], args: list[Any], client: Any | None = None
    ) -> Any:
        return await self._scripts[name](keys=keys, args=args, client=client)
