"""Finding the worker settings (arq style) that declare the job types and their handlers.

The gateway uses the same lookup to learn the type names, so it can refuse an unknown type
with a 422 before anything is queued; it never runs the handlers.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from functools import cache
from typing import Any

from arq.utils import import_string
from arq.worker import Function, func

from schemas.settings import Settings


class HandlersNotFound(ImportError):
    """CONVEYOR_HANDLERS / --handlers names something that cannot be imported."""


@cache
def load_worker_settings(path: str) -> Any:
    """`package.module:Attr`, or `package.module` meaning its `WorkerSettings`. Like arq's
    CLI, the working directory is importable, so `--handlers myjobs` finds ./myjobs.py."""
    module_name, _, attr = path.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise HandlersNotFound(f"cannot import handlers module {module_name!r}: {exc}") from exc
    try:
        return getattr(module, attr or "WorkerSettings")
    except AttributeError:
        raise HandlersNotFound(f"{module_name} has no {attr or 'WorkerSettings'}") from None


def declare(
    handler: Function | Callable[..., Any] | str,
    *,
    name: str | None = None,
    timeout: float | None = None,
    max_tries: int | None = None,
) -> Function:
    """A handler as the worker runs it: arq's `func()` for an `async def` (or an arq
    `Function`, or an import path), and the same declaration for a plain `def`, which arq's
    `func()` refuses and Conveyor runs in a thread. `functions` may list either as it is."""
    if isinstance(handler, str):
        handler = import_string(handler)
    if isinstance(handler, Function) or inspect.iscoroutinefunction(handler):
        return func(handler, name=name, timeout=timeout, max_tries=max_tries)
    if not callable(handler):
        raise TypeError(f"{handler!r} is not a handler")
    return Function(name or handler.__qualname__, handler, timeout, None, None, max_tries)


def functions(settings: Settings, handlers: str | None = None) -> dict[str, Function]:
    declared = getattr(load_worker_settings(handlers or settings.handlers), "functions", ())
    return {f.name: f for f in map(declare, declared)}


def job_types(settings: Settings) -> set[str]:
    return set(functions(settings))
