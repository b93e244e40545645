"""`check_json`: what a payload or a result may hold."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.strict_json import MAX_JSON_DEPTH, NotStrictJson, check_json


def nested(levels: int) -> Any:
    value: Any = 1
    for i in range(levels):
        value = {"k": value} if i % 2 else [value]
    return value


def test_ordinary_json_passes() -> None:
    check_json({"a": [1, 2.5, "ü", None, True, {"b": -(2**70)}], "t": (1, 2)}, "payload")
    check_json(nested(MAX_JSON_DEPTH), "payload")


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ({"a": float("nan")}, r"payload\.a: nan is not a JSON number"),
        ({"a": [1, float("inf")]}, r"payload\.a\[1\]: inf"),
        ({"a": float("-inf")}, "-inf"),
        ({"a": "x\ud800y"}, r"payload\.a: a lone surrogate"),
        ({"\udfff": 1}, "a key holds a lone surrogate"),
        ({"a": {1: 2}}, "key 1 is not a string"),
        ({"a": {1, 2}}, "a set is not JSON"),
        ({"a": b"x"}, "a bytes is not JSON"),
    ],
)
def test_what_json_cannot_carry_is_named(value: Any, says: str) -> None:
    with pytest.raises(NotStrictJson, match=says):
        check_json(value, "payload")


def test_depth_is_bounded_even_far_past_the_recursion_limit() -> None:
    with pytest.raises(NotStrictJson, match=f"nested deeper than {MAX_JSON_DEPTH} levels"):
        check_json(nested(MAX_JSON_DEPTH + 1), "payload")
    with pytest.raises(NotStrictJson, match="nested deeper"):
        check_json(nested(100_000), "payload")


def test_a_long_path_is_shortened_in_the_message() -> None:
    deep = {"k" * 50: {"k" * 50: {"k" * 50: float("nan")}}}
    with pytest.raises(NotStrictJson) as info:
        check_json(deep, "payload")
    assert len(str(info.value)) < 200
