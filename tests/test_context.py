"""LSP position conversion beyond the golden table: unit sizes, line spans, cursor helpers."""
from __future__ import annotations

import pytest

from lsp_server.core.context import (CursorContext, InvalidPosition, char_units, chars_to_units, line_span,
                                offset_to_position, position_to_offset, units_to_chars)


@pytest.mark.parametrize("char,utf8,utf16,utf32", [("a", 1, 1, 1), ("é", 2, 1, 1), ("名", 3, 1, 1),
                                                   ("😀", 4, 2, 1), ("\u0301", 2, 1, 1)])
def test_code_units_per_character(char, utf8, utf16, utf32):
    assert [char_units(char, e) for e in ("utf-8", "utf-16", "utf-32")] == [utf8, utf16, utf32]


def test_units_round_down_inside_a_character_and_clamp_at_the_end():
    line = "a😀名b"
    assert [units_to_chars(line, u, "utf-16") for u in range(7)] == [0, 1, 1, 2, 3, 4, 4]
    assert [units_to_chars(line, u, "utf-8") for u in range(0, 13, 2)] == [0, 1, 1, 2, 3, 4, 4]
    assert [chars_to_units(line, c, "utf-8") for c in range(5)] == [0, 1, 5, 8, 9]
    assert [chars_to_units(line, c, "utf-16") for c in range(5)] == [0, 1, 3, 4, 5]


def test_line_spans_follow_lsp_line_breaks():
    text = "a\r\nb\rc\n"
    assert [line_span(text, n) for n in range(5)] == [(0, 1), (3, 4), (5, 6), (7, 7), None]


def test_offset_past_the_end_is_a_clear_error():
    with pytest.raises(InvalidPosition, match="past the end"):
        offset_to_position("abc", 4)
    with pytest.raises(InvalidPosition, match="offset"):
        offset_to_position("abc", -1)


def test_every_utf16_column_of_an_emoji_line_lands_on_a_character():
    text = "x😀😀y\n"
    offsets = [position_to_offset(text, 0, u) for u in range(8)]
    assert offsets == [0, 1, 1, 2, 2, 3, 4, 4]


@pytest.mark.parametrize("prefix,suffix,line_prefix,line_suffix,newline", [
    ("a\r", "b\rc", "", "b", "\r"),
    ("x = 1\n    y", " = 2\r\nz", "    y", " = 2", "\n"),
    ("one line", "", "one line", "", "\n"),
    ("", "a\r\nb", "", "a", "\r\n"),
])
def test_cursor_line_helpers(prefix, suffix, line_prefix, line_suffix, newline):
    ctx = CursorContext(prefix, suffix)
    assert (ctx.line_prefix, ctx.line_suffix, ctx.newline) == (line_prefix, line_suffix, newline)
