"""The built-in handlers and the default worker settings that declare them.

A user's worker settings module looks the same (arq style) and is chosen with
`conveyor worker --handlers mymodule:WorkerSettings` or `CONVEYOR_HANDLERS`:

    class WorkerSettings:
        functions = [func(resize, name="resize", timeout=600, max_tries=3), noop,
                     transcribe,  # a plain `def`: runs in a thread
                     declare(transcode, name="transcode", timeout=3600)]
        on_startup = open_http_client   # async def on_startup(ctx: dict) -> None
        on_shutdown = close_http_client
"""

from __future__ import annotations

from typing import ClassVar

from arq.worker import Function, func

from consumers.handlers.builtin import noop, sleep
from consumers.handlers.ingest import ingest_url
from consumers.registry import declare

__all__ = ["BUILTIN_FUNCTIONS", "WorkerSettings", "declare"]

# arq types a handler's ctx as a dict; ours receive a JobContext (which also answers ctx[...]).
BUILTIN_FUNCTIONS = [
    func(noop, name="noop"),  # type: ignore[arg-type]
    func(sleep, name="sleep"),  # type: ignore[arg-type]
    func(ingest_url, name="ingest_url"),  # type: ignore[arg-type]
]


class WorkerSettings:
    functions: ClassVar[list[Function]] = BUILTIN_FUNCTIONS
