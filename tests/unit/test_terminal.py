"""Text from containers is printed with its control characters escaped."""

from __future__ import annotations

from volagent.terminal import printable, printable_tree


def test_plain_text_is_left_alone() -> None:
    for text in ("/volumes/r-a/web/data", "café au lait", "tab-less, 100%"):
        assert printable(text) == text


def test_controls_and_invisible_marks_are_escaped() -> None:
    assert printable("/d\x1b[2J\x1b[HOK\r\n") == "/d\\x1b[2J\\x1b[HOK\\r\\n"
    assert printable("a\x00b\x7fc\x9bd\te") == "a\\x00b\\x7fc\\x9bd\\te"
    assert printable("evil\u202etxt.exe\u200b") == "evil\\u202etxt.exe\\u200b"
    assert printable("line\u2028two") == "line\\u2028two"


def test_trees_are_cleaned_keys_included() -> None:
    tree = {"a\x1b": ["x\ry", {"k": "\x07"}], "n": 3, "none": None}
    assert printable_tree(tree) == {"a\\x1b": ["x\\ry", {"k": "\\x07"}], "n": 3, "none": None}
