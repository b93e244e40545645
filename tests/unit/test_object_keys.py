"""Object keys: `{queue}/{job_id}/{name}`, where nothing a client sends escapes the prefix."""

from __future__ import annotations

import pytest

from consumers.storage import MAX_NAME_BYTES, object_key, safe_name


def test_key_is_queue_job_name() -> None:
    assert object_key("default", "01HXYZ", "video.mp4") == "default/01HXYZ/video.mp4"


@pytest.mark.parametrize(
    "name",
    ["../../etc/passwd", "..", ".", "a/../../b", "/abs/path", "..\\..\\win", "a/b/c", "%2e%2e/x"],
)
def test_names_stay_one_segment_under_the_prefix(name: str) -> None:
    key = object_key("q", "job1", name)
    queue, job_id, last = key.split("/")
    assert (queue, job_id) == ("q", "job1")
    assert last and ".." not in last and "\\" not in last and last not in {".", ".."}


@pytest.mark.parametrize("name", ["", "...", "/", "\x00\x01", "   ", "___"])
def test_nothing_left_means_output(name: str) -> None:
    assert safe_name(name) == "output"


def test_control_characters_and_unicode_are_replaced() -> None:
    name = safe_name("re\x00port\r\n\t.pdf")
    assert name.isascii() and name.isprintable() and name.endswith(".pdf")
    assert safe_name("café ☕.txt").isascii()


def test_fullwidth_tricks_are_normalised_first() -> None:
    # NFKC turns the fullwidth solidus and full stops into `/` and `.`, which are then
    # treated like the ASCII ones.
    assert safe_name("\uff0e\uff0e\uff0fsecret") == "secret"


def test_long_names_are_bounded_and_keep_their_extension() -> None:
    name = safe_name("x" * 5000 + ".tar.gz")
    assert len(name) <= MAX_NAME_BYTES
    assert name.endswith(".gz")


def test_ordinary_names_are_kept() -> None:
    for name in ("video.mp4", "report-2024_01.csv", "A.B.C"):
        assert safe_name(name) == name


@pytest.mark.parametrize("queue,job_id", [("..", "j"), ("a/b", "j"), ("q", "../j"), ("", "j")])
def test_queue_and_job_id_cannot_inject_segments(queue: str, job_id: str) -> None:
    with pytest.raises(ValueError):
        object_key(queue, job_id, "x")
