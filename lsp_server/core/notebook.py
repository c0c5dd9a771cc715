"""A notebook's cells as one document, so the model sees the whole notebook around the cursor.

Two styles. "percent" (any model): the format that Jupytext, VS Code and Spyder read: each cell
starts with a separator line (`# %%` in the kernel language's comment; `# %% [markdown]` for
markdown), code cells follow verbatim and markdown cells become line comments. Every cell's text
is followed by one line break, so cell line `i` is document line `start + i` and a cursor maps by
adding the cell's start line.

"jupyter" (a tokenizer with StarCoder's Jupyter tokens): the notebook as StarCoder saw notebooks
in training, `<jupyter_start>` then each cell as `<jupyter_text>markdown` or `<jupyter_code>code`,
a code cell's output (where the client sent one) as `<jupyter_output>output`. Each cell's text
ends with one line break (our choice, not StarCoder's data, which the public sources leave
unclear): the cursor at the end of a cell then has nothing after it on its line, as in an
editor, and post-processing treats it as the end of a line. A cell's first line sits after its
marker, so a position on that line shifts by the marker's length.
Pure: plain strings in, plain data out.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from engine.fim import JUPYTER_CODE, JUPYTER_OUTPUT, JUPYTER_START, JUPYTER_TEXT, FimTokens
from lsp_server.core.context import CursorContext, Encoding, chars_to_units, cursor_context
from lsp_server.core.languages import line_comment

CellKind = Literal["code", "markdown"]
NotebookStyle = Literal["percent", "jupyter"]


@dataclass(frozen=True, slots=True)
class Cell:
    """One notebook cell's kind and text."""

    kind: CellKind
    text: str
    output: str = ""  # a code cell's output as text, where the client sends it ("" = none sent)


def notebook_style(fim: FimTokens) -> NotebookStyle:
    """Jupyter markers for a tokenizer that has them (StarCoder's family), else the percent format."""
    return "jupyter" if fim.jupyter else "percent"


def _cell_lines(cell: Cell, comment: str) -> list[str]:
    """The document lines a cell's body becomes (the cell's own lines, markdown commented)."""
    lines = cell.text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if cell.kind == "markdown":
        return [f"{comment} {line}" if line else comment for line in lines]
    return lines


def _separator(cell: Cell, comment: str) -> str:
    return f"{comment} %%" if cell.kind == "code" else f"{comment} %% [markdown]"


def _split_lines(text: str) -> list[str]:
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _check_kinds(cells: Sequence[Cell]) -> None:
    for cell in cells:
        if cell.kind not in ("code", "markdown"):
            raise ValueError(f"a cell's kind must be 'code' or 'markdown', got {cell.kind!r}")


def _jupyter_layout(cells: Sequence[Cell]) -> tuple[str, list[tuple[int, str]]]:
    """The Jupyter-style document, and for each cell (document line of its first line, the text
    before that first line on its document line)."""
    _check_kinds(cells)
    pieces: list[str] = []
    starts: list[tuple[int, str]] = []
    line, head = 0, ""  # the document line being written, and its text so far

    def write(text: str) -> None:
        nonlocal line, head
        lines = _split_lines(text)
        pieces.append("\n".join(lines))
        line += len(lines) - 1
        head = lines[-1] if len(lines) > 1 else head + lines[0]

    write(JUPYTER_START)
    for cell in cells:
        write(JUPYTER_CODE if cell.kind == "code" else JUPYTER_TEXT)
        starts.append((line, head))
        write("\n".join(_split_lines(cell.text)) + "\n")  # a cell ending in a lone \r keeps its empty last line
        if cell.kind == "code" and cell.output:
            write(JUPYTER_OUTPUT + cell.output.rstrip("\r\n") + "\n")
    return "".join(pieces), starts


def notebook_text(cells: Sequence[Cell], language: str, style: NotebookStyle = "percent") -> tuple[str, list[int]]:
    """The notebook as one document, and the document line where each cell's text starts."""
    if style == "jupyter":
        text, starts = _jupyter_layout(cells)
        return text, [line for line, _ in starts]
    if style != "percent":
        raise ValueError(f"a notebook style is 'percent' or 'jupyter', got {style!r}")
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
                      encoding: Encoding = "utf-16", style: NotebookStyle = "percent") -> tuple[int, int]:
    """The (line, character) in notebook_text's document of a position in cell `cell_index`.

    A line past the cell's last line clamps to the end of the cell, as LSP clamps to the end of a
    document; a character past the line's end is left for the document conversion to clamp.
    """
    if not 0 <= cell_index < len(cells):
        raise IndexError(f"cell_index {cell_index} is out of range for a notebook of {len(cells)} cells")
    if line < 0 or character < 0:
        raise ValueError(f"cell positions are >= 0, got line {line}, character {character}")
    if style == "jupyter":
        _, starts = _jupyter_layout(cells)
        start, head = starts[cell_index]
        own = _split_lines(cells[cell_index].text)
        if line >= len(own):
            line, character = len(own) - 1, chars_to_units(own[-1], len(own[-1]), encoding)
        shift = chars_to_units(head, len(head), encoding) if line == 0 else 0
        return start + line, character + shift
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
                     encoding: Encoding = "utf-16", style: NotebookStyle = "percent") -> CursorContext:
    """The cursor context of a position in a cell, over the whole notebook."""
    text, _ = notebook_text(cells, language, style)
    doc_line, doc_char = map_cell_position(cells, language, cell_index, line, character, encoding, style)
    return cursor_context(text, doc_line, doc_char, encoding)

