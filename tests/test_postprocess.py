"""Post-processing helpers and policies beyond the golden table."""
from __future__ import annotations

import pytest

from engine.fim import FimTokens
from lsp_server.core.context import CursorContext
from lsp_server.core.postprocess import (PostprocessConfig, ShownSuggestion, Suggestion, cut_at_stops, indent_width,
                                    opens_block, postprocess, reuse_suggestion)

SANTACODER = FimTokens(family="santacoder", eod="<|endoftext|>", prefix="<fim-prefix>", middle="<fim-middle>",
                       suffix="<fim-suffix>", pad="<fim-pad>")


@pytest.mark.parametrize("line,opens", [("def f(x):", True), ("if (a) {", True), ("items = [", True),
                                        ("x.map(y =>", True), ("foo do", True), ("x = 1", False),
                                        ("return done", False), ("s = 'a:b'", False), ("call(a)  ", False)])
def test_block_openers(line, opens):
    assert opens_block(line) is opens


def test_indent_width_counts_tabs_as_four():
    assert [indent_width(x) for x in ("x", "    x", "\tx", "\t  x", "   ")] == [0, 4, 4, 6, 3]


def test_cut_at_the_earliest_stop():
    assert cut_at_stops("a<fim-pad>b<|endoftext|>", ("<|endoftext|>", "<fim-pad>")) == "a"
    assert cut_at_stops("abc", ("", "z")) == "abc"


def test_a_control_character_ends_the_suggestion_tabs_and_line_breaks_do_not():
    ctx = CursorContext("total = scale([1, 2], ", "\n")
    assert postprocess("factor)\x0back", ctx, PostprocessConfig()) == Suggestion("factor)")
    for control in ("\x00", "\x1b", "\x0c", "\x7f"):
        assert postprocess(f"a{control}b", ctx, PostprocessConfig()) == Suggestion("a")
    assert postprocess("\x0bjunk", ctx, PostprocessConfig()) is None
    # A budget that ended inside a multi-byte character decodes to U+FFFD: never inserted.
    assert postprocess("factor)  # \u00e9t\ufffd", ctx, PostprocessConfig()) == Suggestion("factor)  # \u00e9t")
    block = CursorContext("def f():\n", "")
    assert postprocess("\tx = 1\r\n\treturn x", block, PostprocessConfig()) == Suggestion("\tx = 1\n\treturn x")


def test_santacoder_stop_tokens_end_the_middle():
    ctx = CursorContext("x = ", "\n")
    assert postprocess("size<fim-middle>junk", ctx, PostprocessConfig(), SANTACODER.stop_tokens()) == Suggestion("size")


def test_lone_cr_document_gets_lone_cr():
    ctx = CursorContext("if ok:\r    ", "")
    assert postprocess("a = 1\n    b = 2", ctx, PostprocessConfig()) == Suggestion("a = 1\r    b = 2")


def test_always_respects_max_lines_of_one():
    ctx = CursorContext("def f():\n    ", "")
    assert postprocess("a = 1\n    b = 2", ctx,
                       PostprocessConfig(multiline="always", max_lines=1)) == Suggestion("a = 1")


@pytest.mark.parametrize("field,value", [("multiline", "sometimes"), ("max_lines", 0)])
def test_bad_postprocess_config_is_a_clear_error(field, value):
    with pytest.raises(ValueError, match=field):
        PostprocessConfig(**{field: value})


def test_forward_typing_through_a_whole_suggestion():
    shown = ShownSuggestion("total = ", "\n", Suggestion("price * qty"))
    rests = [reuse_suggestion(shown, CursorContext("total = " + "price * qty"[:n], "\n")) for n in range(1, 12)]
    assert [r.text if r else None for r in rests] == [
        "rice * qty", "ice * qty", "ce * qty", "e * qty", " * qty", "* qty", " qty", "qty", "ty", "y", None]


ONE = PostprocessConfig(multiline="never")


@pytest.mark.parametrize("prefix, raw, shown", [
    # eight columns typed under an 8-column line: eight more spaces would break the indentation
    ("    def inc(self):\n        self.n = 0\n        ", "        self.n += 1", "self.n += 1"),
    # under an opener: one level deeper than the opener, however the cursor got there
    ("def f(x):\n", "    return x", "    return x"),
    ("def f(x):\n", "        return x", "    return x"),
    ("def f(x):\n    ", "    return x", "return x"),
    # at column 0 under indented code: back to that code's depth, not further
    ("def f(x):\n    y = x\n", "        return y", "    return y"),
    ("def f(x):\n    y = x\n", "    return y", "    return y"),
    # inside parentheses a continuation line aligns anywhere: left alone
    ("total = compute(first,\n", "                second)", "                second)"),
    # in a brace block the rule holds as in Python
    ("function f() {\n  let a = 1;\n  ", "      a += 1;", "a += 1;"),
])
def test_a_suggestion_on_an_empty_line_starts_no_deeper_than_the_code_allows(prefix, raw, shown):
    assert postprocess(raw, CursorContext(prefix, "\n"), ONE) == Suggestion(shown)


def test_a_block_moved_back_keeps_its_shape():
    ctx = CursorContext("class A:\n    def f(self):\n        ", "\n")
    raw = "    if self.x:\n                return 1\n            return 2"
    assert postprocess(raw, ctx, PostprocessConfig(multiline="always")) == Suggestion(
        "if self.x:\n            return 1\n        return 2")


@pytest.mark.parametrize("above,raw,shown", [
    ("        self.name = name", "self.name = name", None),  # a copy of the line above
    ("        self.y = y", "self.y = z", None),  # the line above would be a dead store
    ("        count = 0", "count = len(items)", None),
    ("        self.y = y", "self.z = z", "self.z = z"),
    ("        text = read()", "text = text.strip()", "text = text.strip()"),  # reads what it replaces
    ("        total = 0", "total += value", "total += value"),  # an update, not a new value
    ("        x = 1", "x == 1", "x == 1"),
    ("        self.y = y", "y = self.y", "y = self.y"),  # another target
])
def test_a_line_that_repeats_or_overwrites_the_line_above_is_not_suggested(above, raw, shown):
    ctx = CursorContext(f"class P:\n    def __init__(self, x, y):\n{above}\n        ", "\n")
    assert postprocess(raw, ctx, ONE) == (Suggestion(shown) if shown is not None else None)
