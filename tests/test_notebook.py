"""Notebooks as one document: comment styles, bad input, and every cell position mapped."""
from __future__ import annotations

import pytest

from lsp_server.core.context import cursor_context
from lsp_server.core.notebook import Cell, map_cell_position, notebook_context, notebook_text

CELLS = [Cell("code", "s = '😀'\nprint(s)"), Cell("markdown", "Émoji 😀 notes"), Cell("code", "名 = 1\n")]


def test_markdown_cells_use_the_kernels_comment():
    assert notebook_text([Cell("markdown", "Load"), Cell("code", "SELECT 1;")], "sql") == (
        "-- %% [markdown]\n-- Load\n-- %%\nSELECT 1;\n", [1, 3])


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "utf-32"])
def test_every_code_cell_position_lands_on_the_same_text(encoding):
    text, _ = notebook_text(CELLS, "python")
    for index, cell in enumerate(CELLS):
        if cell.kind != "code":
            continue
        for line_no, line in enumerate(cell.text.split("\n")):
            for chars in range(len(line) + 1):
                units = len(line[:chars].encode("utf-16-le")) // 2 if encoding == "utf-16" else (
                    len(line[:chars].encode()) if encoding == "utf-8" else chars)
                ctx = notebook_context(CELLS, "python", index, line_no, units, encoding)
                assert ctx.prefix + ctx.suffix == text
                assert ctx.line_prefix == line[:chars] and ctx.line_suffix == line[chars:]


def test_markdown_position_shifts_past_the_comment_in_utf8():
    line, character = map_cell_position(CELLS, "python", 1, 0, len("Émoji 😀".encode()), "utf-8")
    text, _ = notebook_text(CELLS, "python")
    ctx = cursor_context(text, line, character, "utf-8")
    assert (ctx.line_prefix, ctx.line_suffix) == ("# Émoji 😀", " notes")


def test_line_past_a_cell_clamps_to_its_end_in_the_encoding():
    assert map_cell_position(CELLS, "python", 0, 9, 0, "utf-8") == (2, len("print(s)"))
    assert map_cell_position(CELLS, "python", 1, 4, 0, "utf-8") == (4, len("# Émoji 😀 notes".encode()))


@pytest.mark.parametrize("cells,args,error", [
    ([Cell("raw", "x")], (0, 0, 0), ValueError),  # type: ignore[arg-type]
    (CELLS, (-1, 0, 0), IndexError),
    (CELLS, (0, -1, 0), ValueError),
    (CELLS, (0, 0, -2), ValueError),
])
def test_bad_cells_and_positions_are_clear_errors(cells, args, error):
    with pytest.raises(error):
        if cells[0].kind == "raw":
            notebook_text(cells, "python")
        else:
            map_cell_position(cells, "python", *args)
