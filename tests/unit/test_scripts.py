"""The Lua scripts spell no name that Python owns: each comes from the generated constants."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from producer.scripts import (
    SCRIPT_DIR,
    SCRIPT_NAMES,
    definitions,
    include_source,
    lua_constants,
    script_source,
    shaken,
)
from schemas.events import EventType, StepState
from schemas.keys import (
    CALLBACKS_SUFFIX,
    CONSUMER_GROUP,
    FINISHED_SUFFIX,
    FLOW_GROUP,
    FLOW_SUFFIX,
    JOB_CHILDREN_SUFFIX,
    JOB_EVENTS_SUFFIX,
    JOB_STEPS_SUFFIX,
    PAUSED_SUFFIX,
    TASK_CANCEL_CHILDREN,
    TASK_CHILD_ENDED,
)
from schemas.status import JobStatus

LUA_FILES = sorted([*SCRIPT_DIR.glob("*.lua"), *SCRIPT_DIR.glob("includes/*.lua")])
STRING_LITERAL = re.compile(r"'([^'\n]*)'|\"([^\"\n]*)\"")
OWNED_BY_PYTHON = {
    *(s.value for s in JobStatus),
    *(e.value for e in EventType),
    # (StepState's values are generated too, but `started` is also the start scripts' reply)
    StepState.RESTORED.value,
    CONSUMER_GROUP,
    FLOW_GROUP,
    JOB_EVENTS_SUFFIX,
    JOB_STEPS_SUFFIX,
    JOB_CHILDREN_SUFFIX,
    FLOW_SUFFIX,
    CALLBACKS_SUFFIX,
    PAUSED_SUFFIX,
    FINISHED_SUFFIX,
    TASK_CHILD_ENDED,
    TASK_CANCEL_CHILDREN,
}


def code_literals(path: Path) -> list[str]:
    """Every string literal outside comments."""
    found = []
    for line in path.read_text().splitlines():
        code = line.split("--", 1)[0] if "--" not in line.split("'", 1)[0] else ""
        found += [a or b for a, b in STRING_LITERAL.findall(code)]
    return found


@pytest.mark.parametrize("path", LUA_FILES, ids=lambda p: p.name)
def test_a_script_spells_no_status_event_group_or_suffix_itself(path: Path) -> None:
    spelled = sorted(set(code_literals(path)) & OWNED_BY_PYTHON)
    assert spelled == [], f"{path.name} spells {spelled}: use the generated names"


def test_the_generated_constants_name_every_status_and_event() -> None:
    constants = lua_constants()
    for status in JobStatus:
        assert f"local {status.name} = '{status.value}'\n" in constants
    for event in EventType:
        assert f"local JOB_{event.name} = '{event.value}'\n" in constants
    assert f"local GROUP = '{CONSUMER_GROUP}'" in constants


def test_every_file_in_the_folder_is_a_script() -> None:
    assert tuple(sorted(p.stem for p in SCRIPT_DIR.glob("*.lua"))) == SCRIPT_NAMES
    assert "submit" in SCRIPT_NAMES and "take" in SCRIPT_NAMES
    for name in SCRIPT_NAMES:
        source = script_source(name)
        assert "--@include" not in source
        assert source.count("generated from schemas") == 1, name


def test_a_script_carries_every_library_name_it_uses_and_no_unused_function() -> None:
    library = lua_constants() + "".join(
        include_source(p.stem) for p in sorted(SCRIPT_DIR.glob("includes/*.lua"))
    )
    defined = set().union(*(names for names, _ in definitions(library)))
    for name in SCRIPT_NAMES:
        source = script_source(name)
        carried = set().union(*(names for names, _ in definitions(source)))
        used = set(re.findall(r"[A-Za-z_]\w*", re.sub(r"--.*", "", source)))
        assert (used & defined) - carried == set(), name
        functions = set(re.findall(r"^local function (\w+)", source, re.MULTILINE))
        for function in functions:
            calls = re.findall(rf"\b{function}\b", re.sub(r"--.*", "", source))
            assert len(calls) > 1, f"{name} carries {function}, which it never calls"


def test_shaking_keeps_what_is_named_through_another_definition() -> None:
    library = "local A = 1\nlocal B = A\n-- about C\nlocal function C()\n  return B\nend\n"
    assert shaken(library, "return C()") == library
    assert shaken(library, "return A") == "local A = 1\n"
