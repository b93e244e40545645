"""What a payload or a result may hold: JSON that every reader of it can read back.

Python's `json` accepts more than JSON: `NaN` and `Infinity` (also what `1e999` parses to),
lone UTF-16 surrogates such as `"\\ud800"` (which cannot be encoded as UTF-8, so Redis
never receives them), and nesting as deep as the stack allows. Each of those was stored or
half-stored once and then failed every later read of the job: pydantic refuses to serialise
more than 255 levels, so one job nested 300 deep made its snapshot, its listing and the SSE
hub's encoder raise. So payloads are checked at the door (`SubmitRequest`) and results before
they are written (the worker), against one rule.
"""

from __future__ import annotations

import math
import re
from typing import Any

# Deep enough for any document a job needs; far below pydantic's serialisation limit (255)
# and Python's recursion limit, so every reader can walk what was accepted.
MAX_JSON_DEPTH = 64

_SURROGATE = re.compile("[\ud800-\udfff]")


class NotStrictJson(ValueError):
    """The value cannot be stored as JSON that every reader accepts. The message names the
    first offending place (`payload.items[3].name`) and the rule it broke."""


def _refused(path: str, why: str) -> NotStrictJson:
    if len(path) > 120:  # 64 levels of long keys: keep the message readable
        path = f"{path[:50]}…{path[-60:]}"
    return NotStrictJson(f"{path}: {why}")


def check_json(value: Any, what: str = "value", *, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise `NotStrictJson` unless `value` is made of dicts with string keys, lists (or
    tuples), strings without lone surrogates, finite numbers, booleans and None, nested at
    most `max_depth` levels (the outermost container is level 1)."""
    # Iterative, so a value deeper than the recursion limit is refused, not crashed on.
    stack: list[tuple[Any, str, int]] = [(value, what, 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise _refused(path, "a lone surrogate cannot be encoded as UTF-8")
        elif isinstance(item, bool) or item is None or isinstance(item, int):
            continue
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise _refused(path, f"{item} is not a JSON number (out of range or NaN)")
        elif isinstance(item, dict | list | tuple):
            if depth + 1 > max_depth:
                raise _refused(path, f"nested deeper than {max_depth} levels")
            if isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, str):
                        raise _refused(path, f"key {key!r} is not a string")
                    if _SURROGATE.search(key):
                        raise _refused(path, "a key holds a lone surrogate")
                    stack.append((child, f"{path}.{key}", depth + 1))
            else:
                stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))
        else:
            raise _refused(path, f"a {type(item).__name__} is not JSON")
