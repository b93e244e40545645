"""Finding the worker settings (arq style) that declare the job types and their handlers.

The gateway uses the same lookup to learn the type names, so it can refuse an unknown type
with a 422 before anything is queued; it never runs the handlers.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import Any

from arq.worker import Function, func

from schemas.settings import Settings


@cache
def load_worker_settings(path: str) -> Any:
    """`package.module:Attr`, or `package.module` meaning its `WorkerSettings`."""
    module_name, _, attr = path.partition(":")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr or "WorkerSettings")
    except AttributeError:
        raise ImportError(f"{module_name} has no {attr or 'WorkerSettings'}") from None


def functions(settings: Settings, handlers: str | None = None) -> dict[str, Function]:
    declared = getattr(load_worker_settings(handlers or settings.handlers), "functions", ())
    return {f.name: f for f in map(func, declared)}


def job_types(settings: Settings) -> set[str]:
    return set(functions(settings))
