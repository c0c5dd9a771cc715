"""A notebook as one Python document for the server: pure functions, no Jupyter imports.

Code cells are joined with a blank line between them; markdown cells become `#` comments (they
often say what the next cell does); raw cells are left out. The cursor, an offset in UTF-16 code
units into the active cell (as the browser counts), becomes an LSP position in that document.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CellKind = Literal["code", "markdown", "raw"]
SEPARATOR = "\n\n"


@dataclass(frozen=True, slots=True)
class Cell:
    kind: CellKind
    source: str


def cell_text(cell: Cell) -> str:
    if cell.kind == "markdown":
        return "\n".join("# " + line if line else "#" for line in cell.source.split("\n"))
    return cell.source


def utf16_len(text: str) -> int:
    return sum(2 if ord(ch) > 0xFFFF else 1 for ch in text)


def utf16_to_index(text: str, offset: int) -> int:
    """The code point index in `text` of a UTF-16 `offset`; ValueError when it is out of range."""
    if offset < 0:
        raise ValueError(f"offset {offset} is negative")
    units = 0
    for index, ch in enumerate(text):
        if units >= offset:
            return index
        units += 2 if ord(ch) > 0xFFFF else 1
    if units < offset:
        raise ValueError(f"offset {offset} is past the end of the cell ({units} UTF-16 units)")
    return len(text)


def notebook_document(cells: list[Cell], active: int, offset: int) -> tuple[str, int, int]:
    """(document text, line, character in UTF-16 units) for the cursor at `offset` in cell `active`."""
    if not 0 <= active < len(cells):
        raise ValueError(f"active cell {active} is not one of the {len(cells)} cells")
    if cells[active].kind != "code":
        raise ValueError(f"active cell {active} is a {cells[active].kind} cell, not code")
    parts, line = [], 0
    for index, cell in enumerate(cells):
        if cell.kind == "raw":
            continue
        if index == active:
            before = cell.source[:utf16_to_index(cell.source, offset)]
            line_in_cell = before.count("\n")
            character = utf16_len(before.rsplit("\n", 1)[-1])
            position = (line + line_in_cell, character)
        text = cell_text(cell)
        parts.append(text)
        line += text.count("\n") + SEPARATOR.count("\n")
    return SEPARATOR.join(parts), *position
