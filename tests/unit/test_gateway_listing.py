from __future__ import annotations

import pytest

from gateway.routes.jobs import decode_cursor, encode_cursor
from producer import Position
from schemas.stream_id import is_stream_id, parse_id


def test_cursors_round_trip_and_refuse_anything_else() -> None:
    position = Position(1_700_000_000_123, "0190abcdef")
    assert decode_cursor(encode_cursor(position)) == position
    for bad in ["", "!!", "bm9wZQ", encode_cursor(position)[:-3], "WzEsMl0", "WyJhIiwiYiJd"]:
        with pytest.raises(ValueError):
            decode_cursor(bad)


def test_stream_ids_compare_as_numbers() -> None:
    assert parse_id("10-2") > parse_id("9-30")
    assert parse_id("10-10") > parse_id("10-9")
    assert is_stream_id("1-0") and not is_stream_id("x-1") and not is_stream_id("")
