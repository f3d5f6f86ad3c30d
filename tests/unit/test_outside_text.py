"""``worker.outside_text.printable``: one visible line of bounded size, whatever came in."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from worker.outside_text import printable


def test_controls_and_format_characters_are_escaped() -> None:
    assert printable("a\nb\r\tc\x1b[2J\x07\x7f\x9b") == "a\\nb\\r\\tc\\x1b[2J\\x07\\x7f\\x9b"
    assert printable("left\u202eright\u200b\u2028") == "left\\u202eright\\u200b\\u2028"
    assert printable("caf\u00e9 \u732b 🐈 and spaces") == "caf\u00e9 \u732b 🐈 and spaces"


def test_long_text_is_cut_with_a_note() -> None:
    assert printable("x" * 12, limit=10) == "x" * 10 + "... [2 more characters]"
    assert printable("\n" * 6, limit=10) == "\\n" * 5 + "... [2 more characters]"


def test_non_strings_are_shown_as_text() -> None:
    assert printable(1402) == "1402"


@given(st.text())
def test_the_result_is_always_one_printable_line(text: str) -> None:
    shown = printable(text, limit=50)
    assert shown.isprintable()
    assert len(shown) <= 50 + len("... [99999 more characters]")
    assert printable(shown, limit=10_000) == shown  # escaping twice changes nothing
