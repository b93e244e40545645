"""`payload_json` writes a payload as `dumps` does (the text Redis keeps and a handler
reads), by a faster encoder, and falls back to `dumps` where that encoder refuses."""

from __future__ import annotations

import json
from typing import Any

import pytest

from producer.producer import dumps, payload_json

SAME_TEXT: list[dict[str, Any]] = [
    {},
    {"n": 1, "url": "https://example.com/a?b=c&d=/e", "ok": True, "none": None},
    {"nested": {"list": [1, 2.5, -0.0, {"deep": ["x"]}]}, "big": 2**70, "neg": -(2**64)},
    {"text": 'é 漢字 😀 \u2028 \x00\x1f "quoted" back\\slash'},
    {"floats": [0.1, 1e16, 1e22, 1.7976931348623157e308, 5e-324, 123456789.123456789]},
]


@pytest.mark.parametrize("payload", SAME_TEXT)
def test_the_same_text_as_dumps(payload: dict[str, Any]) -> None:
    written = payload_json(payload)
    assert (written.decode() if isinstance(written, bytes) else written) == dumps(payload)


def test_a_small_exponent_is_spelled_otherwise_but_is_the_same_number() -> None:
    payload = {"tiny": 1e-7}
    written = payload_json(payload)
    assert json.loads(written) == payload
    assert json.loads(dumps(payload)) == payload


def test_a_lone_surrogate_is_written_by_dumps() -> None:
    payload = {"half": "\ud83d"}  # what "\\ud83d" in a JSON body becomes
    assert payload_json(payload) == dumps(payload)
