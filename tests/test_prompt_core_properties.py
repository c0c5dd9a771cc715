"""Properties of the prompt core over random documents, cursors and generations (hypothesis)."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.fim import FimTokens
from lsp_server.core.context import CursorContext, cursor_context, offset_to_position, position_to_offset
from lsp_server.core.postprocess import PostprocessConfig, postprocess
from lsp_server.core.prompt import CHAR_CUT, PromptConfig, build_prompt

STARCODER = FimTokens(family="starcoder", eod="<|endoftext|>", prefix="<fim_prefix>", middle="<fim_middle>",
                      suffix="<fim_suffix>", filename="<filename>")

# Pieces that exercise every conversion: line breaks of all three kinds, astral emoji (two UTF-16
# units, four UTF-8 bytes), CJK (three bytes), a combining mark, brackets, quotes, indentation.
PIECES = ["\n", "\r\n", "\r", "😀", "名", "e\u0301", "(", ")", "[", "]", "{", "}", '"', "'", ":", "    ",
          "x", "y = 1", "return", "if a", " + ", "#"]
documents = st.lists(st.sampled_from(PIECES), max_size=40).map("".join)
encodings = st.sampled_from(["utf-8", "utf-16", "utf-32"])


@settings(max_examples=200, deadline=None)
@given(documents, st.integers(0, 12), st.integers(0, 40), encodings)
def test_prefix_plus_suffix_is_the_document(text, line, character, encoding):
    ctx = cursor_context(text, line, character, encoding)
    assert ctx.prefix + ctx.suffix == text
    assert ctx.line_prefix + ctx.line_suffix == _line_of(text, len(ctx.prefix))


def _line_of(text: str, offset: int) -> str:
    """The LSP line around `offset`, without its break (written independently of context.py)."""
    lines, start = [], 0
    i = 0
    while i < len(text):
        if text[i] in "\r\n":
            end = i + (2 if text.startswith("\r\n", i) else 1)
            lines.append((start, i, end))
            start = i = end
        else:
            i += 1
    lines.append((start, len(text), len(text)))
    for begin, stop, after in lines:
        if begin <= offset <= stop:
            return text[begin:stop]
    raise AssertionError("offset inside a line break")


@settings(max_examples=200, deadline=None)
@given(documents, st.data(), encodings)
def test_offsets_round_trip_through_positions(text, data, encoding):
    offset = data.draw(st.integers(0, len(text)))
    if 0 < offset < len(text) and text[offset - 1 : offset + 1] == "\r\n":
        offset -= 1  # inside a line break there is no position
    assert position_to_offset(text, *offset_to_position(text, offset, encoding), encoding) == offset


def _follows(remaining: str) -> tuple[str, bool]:
    """The line a suggestion runs into, and whether that line is the rest of the cursor's line."""
    lines = remaining.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines[0].strip():
        return lines[0].strip(), True
    return next((line.strip() for line in lines[1:] if line.strip()), ""), False


@settings(max_examples=400, deadline=None)
@given(documents, st.integers(0, 12), st.integers(0, 40),
       st.lists(st.sampled_from(PIECES + ["<|endoftext|>", "SUFFIX_LINE", "REST"]), max_size=20),
       st.sampled_from(["never", "auto", "always"]))
def test_postprocess_never_retypes_the_line_that_follows(text, line, character, pieces, multiline):
    ctx = cursor_context(text, line, character)
    below = ctx.suffix[len(ctx.line_suffix) :].replace("\r\n", "\n").lstrip("\r\n").split("\n")[0]
    # generations made of random pieces, the cursor line's rest and the next line (what models re-type)
    raw = "".join(ctx.line_suffix if p == "REST" else below if p == "SUFFIX_LINE" else p for p in pieces)
    got = postprocess(raw, ctx, PostprocessConfig(multiline=multiline), STARCODER.stop_tokens())
    if got is None:
        return
    inserted = got.text.replace("\r\n", "\n").replace("\r", "\n")
    assert inserted.strip(), "an empty suggestion must be None"
    assert got.text == got.text.replace("\r\n", "\n").replace("\n", ctx.newline) or ctx.newline == "\r"
    remaining = ctx.suffix[got.replace_chars :]
    assert ctx.suffix[: got.replace_chars] == ctx.line_suffix[: got.replace_chars]
    follows, on_cursor_line = _follows(remaining)
    if not any(c.isalnum() for c in follows):
        return
    lines = (ctx.line_prefix + inserted).split("\n")
    if on_cursor_line:  # the last line runs into the rest of the cursor's line
        assert not inserted.split("\n")[-1].rstrip().endswith(follows), (inserted, follows)
        lines = lines[:-1]
    assert all(x.strip() != follows for x in lines), (inserted, follows)


@settings(max_examples=200, deadline=None)
@given(documents, documents, st.integers(80, 400), st.sampled_from(["auto", "psm"]), st.integers(1, 8))
def test_prompt_fits_and_typing_only_appends(before, after, n_ctx, fim_mode, chunk):
    config = PromptConfig(fim_mode=fim_mode, max_new_tokens=16, chunk_lines=chunk)
    old = build_prompt(CursorContext(before, after), STARCODER, len, n_ctx, config, path="a.py")
    new = build_prompt(CursorContext(before + "x", after), STARCODER, len, n_ctx, config, path="a.py")
    for prompt, prefix in ((old, before), (new, before + "x")):
        assert len(prompt.text) <= n_ctx - config.max_new_tokens
        assert prefix.endswith(prompt.prefix) and after.startswith(prompt.suffix)
        start = len(prefix) - len(prompt.prefix)
        head = prefix[:start]
        breaks = head.count("\n") + head.count("\r") - head.count("\r\n")
        cursor_line = CursorContext(prefix, "").line
        line_start = max(head.rfind("\n"), head.rfind("\r")) + 1
        if prompt.prefix_start_line < cursor_line or line_start == start:
            # the window starts on a chunk boundary: the start of that line, a multiple of the chunk
            assert line_start == start and breaks == prompt.prefix_start_line
            assert prompt.prefix_start_line % prompt.chunk_lines == 0 or prompt.prefix_start_line == cursor_line
            assert not (head.endswith("\r") and prompt.prefix.startswith("\n"))
        else:  # the cursor's line alone is too long: cut a multiple of CHAR_CUT from its start (or all)
            assert prompt.prefix_start_line == cursor_line
            assert (start - line_start) % CHAR_CUT == 0 or prompt.prefix == ""
    if fim_mode == "auto" and new.prefix_start_line == old.prefix_start_line and new.prefix == old.prefix + "x":
        assert new.text == old.text + "x"
