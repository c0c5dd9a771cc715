"""A notebook's cells as one document, so the model sees the whole notebook around the cursor.

Cells are written in the "percent" format that Jupytext, VS Code and Spyder read: each cell starts
with a separator line (`# %%` in the kernel language's comment; `# %% [markdown]` for markdown),
code cells follow verbatim and markdown cells become line comments. Every cell's text is followed
by one line break, so cell line `i` is document line `start + i` and a cursor maps by adding the
cell's start line. Pure: plain strings in, plain data out.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from lsp_server.core.context import CursorContext, Encoding, chars_to_units, cursor_context
from lsp_server.core.languages import line_comment

CellKind = Literal["code", "markdown"]


@dataclass(frozen=True, slots=True)
class Cell:
    """One notebook cell's kind and text."""

    kind: CellKind
    text: str


def _cell_lines(cell: Cell, comment: str) -> list[str]:
    """The document lines a cell's body becomes (the cell's own lines, markdown commented)."""
    lines = cell.text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if cell.kind == "markdown":
        return [f"{comment} {line}" if line else comment for line in lines]
    return lines


def _separator(cell: Cell, comment: str) -> str:
    return f"{comment} %%" if cell.kind == "code" else f"{comment} %% [markdown]"


def notebook_text(cells: Sequence[Cell], language: str) -> tuple[str, list[int]]:
    """The notebook as one document, and the document line where each cell's text starts."""
    comment = line_comment(language)
    out: list[str] = []
    starts: list[int] = []
    for cell in cells:
        if cell.kind not in ("code", "markdown"):
            raise ValueError(f"a cell's kind must be 'code' or 'markdown', got {cell.kind!r}")
        out.append(_separator(cell, comment))
        starts.append(len(out))
        out.extend(_cell_lines(cell, comment))
    return ("\n".join(out) + "\n" if out else ""), starts


def map_cell_position(cells: Sequence[Cell], language: str, cell_index: int, line: int, character: int,
                      encoding: Encoding = "utf-16") -> tuple[int, int]:
    """The (line, character) in notebook_text's document of a position in cell `cell_index`.

    A line past the cell's last line clamps to the end of the cell, as LSP clamps to the end of a
    document; a character past the line's end is left for the document conversion to clamp.
    """
    if not 0 <= cell_index < len(cells):
        raise IndexError(f"cell_index {cell_index} is out of range for a notebook of {len(cells)} cells")
    if line < 0 or character < 0:
        raise ValueError(f"cell positions are >= 0, got line {line}, character {character}")
    comment = line_comment(language)
    start = sum(1 + len(_cell_lines(c, comment)) for c in cells[:cell_index]) + 1
    cell = cells[cell_index]
    own = _cell_lines(cell, comment)
    if line >= len(own):
        last = own[-1]
        return start + len(own) - 1, chars_to_units(last, len(last), encoding)
    shift = len(comment) + 1 if cell.kind == "markdown" else 0
    return start + line, character + shift


def notebook_context(cells: Sequence[Cell], language: str, cell_index: int, line: int, character: int,
                     encoding: Encoding = "utf-16") -> CursorContext:
    """The cursor context of a position in a cell, over the whole notebook."""
    text, _ = notebook_text(cells, language)
    doc_line, doc_char = map_cell_position(cells, language, cell_index, line, character, encoding)
    return cursor_context(text, doc_line, doc_char, encoding)

