"""What the proxy tells the server about a notebook: pure functions, no Jupyter imports.

A notebook is an LSP notebook document: each code or markdown cell is a cell text document in the
kernel's language (raw cells are left out), so the server builds the prompt from the whole
notebook, markdown as comments of that language, exactly as for VS Code's notebooks. A keystroke
changes one cell's text; adding, deleting or moving cells is a splice of the cell list. The
cursor, an offset in UTF-16 code units into the active cell (as the browser counts), becomes an
LSP position in that cell. A file editor's text is a plain text document (`FileSync`). The browser
never says when a notebook or file is closed, so the server keeps the `max_open` ones completed
most recently; the one used longest ago is closed on it and opened again if completed later.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

CellKind = Literal["code", "markdown", "raw"]


@dataclass(frozen=True, slots=True)
class Cell:
    """One cell as the browser sends it."""

    kind: CellKind
    source: str


@dataclass(frozen=True, slots=True)
class Splice:
    """How a cell list became another: `delete_count` cells at `start` replaced by the new list's
    `insert_count` cells there; the cells before `start` and after the replaced ones are equal."""

    start: int
    delete_count: int
    insert_count: int


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


def cell_position(source: str, offset: int) -> tuple[int, int]:
    """(line, character in UTF-16 units) in a cell of the cursor at UTF-16 `offset`."""
    before = source[:utf16_to_index(source, offset)]
    return before.count("\n"), utf16_len(before.rsplit("\n", 1)[-1])


def document_cells(cells: Sequence[Cell], active: int) -> tuple[list[Cell], int]:
    """The cells the server gets (raw cells left out) and the active cell's index among them."""
    if not 0 <= active < len(cells):
        raise ValueError(f"active cell {active} is not one of the {len(cells)} cells")
    unknown = sorted({cell.kind for cell in cells} - {"code", "markdown", "raw"})
    if unknown:
        raise ValueError(f"a cell's kind is code, markdown or raw, not {unknown[0]!r}")
    kept = [cell for cell in cells if cell.kind != "raw"]
    return kept, sum(1 for cell in cells[:active] if cell.kind != "raw")


def diff_cells(old: Sequence[Cell], new: Sequence[Cell]) -> Splice:
    """The smallest single splice that turns `old` into `new` (equal cells kept at both ends)."""
    limit = min(len(old), len(new))
    start = 0
    while start < limit and old[start] == new[start]:
        start += 1
    end = 0  # cells equal at the end, not overlapping the equal start
    while end < limit - start and old[len(old) - 1 - end] == new[len(new) - 1 - end]:
        end += 1
    return Splice(start, len(old) - start - end, len(new) - start - end)


@dataclass(slots=True)
class OpenCell:
    """A cell the server has open: its document's URI and version, and its content."""

    uri: str
    cell: Cell
    version: int = 1


@dataclass(slots=True)
class OpenNotebook:
    """A notebook the server has open, in the kernel language its cells were opened with."""

    language: str
    cells: list[OpenCell]
    version: int = 1


LSP_CELL_KIND = {"markdown": 1, "code": 2}  # NotebookCellKind: Markup, Code
Message = tuple[str, dict[str, Any]]  # an LSP notification: method, params


MAX_OPEN = 32  # notebooks, and files, the server keeps open (texts only; its cache budget bounds the rest)


class NotebookSync:
    """What the server has of each notebook, and the notifications that bring it up to date."""

    def __init__(self, max_open: int = MAX_OPEN) -> None:
        assert max_open >= 1, f"max_open must be >= 1, got {max_open}"
        self.notebooks: dict[str, OpenNotebook] = {}  # notebook uri -> its open cells, least recently used first
        self.max_open = max_open
        self._numbers = itertools.count(1)  # cell URIs are never reused

    def sync(self, uri: str, cells: Sequence[Cell], language: str) -> tuple[list[Message], list[str]]:
        """The notifications that turn the server's copy of notebook `uri` into `cells` (code and
        markdown only), and the cells' document URIs in order."""
        assert all(c.kind in LSP_CELL_KIND for c in cells), "raw cells are left out (document_cells)"
        messages: list[Message] = []
        notebook = self.notebooks.pop(uri, None)  # put back last: the most recently used
        if notebook is not None and notebook.language != language:  # another kernel: reopen in its language
            messages.append(_close(uri, notebook))
            notebook = None
        if notebook is not None:
            self.notebooks[uri] = notebook
        else:
            while len(self.notebooks) >= self.max_open:
                oldest = next(iter(self.notebooks))
                messages.append(_close(oldest, self.notebooks.pop(oldest)))
            notebook = self.notebooks[uri] = OpenNotebook(language, [self._open(uri, c) for c in cells])
            messages.append(("notebookDocument/didOpen", {
                "notebookDocument": {"uri": uri, "notebookType": "jupyter-notebook", "version": 1,
                                     "cells": [_lsp_cell(c) for c in notebook.cells]},
                "cellTextDocuments": [_text_document(c, language) for c in notebook.cells]}))
            return messages, [c.uri for c in notebook.cells]
        splice = diff_cells([c.cell for c in notebook.cells], cells)
        old = notebook.cells[splice.start:splice.start + splice.delete_count]
        new = cells[splice.start:splice.start + splice.insert_count]
        if old or new:
            if len(old) == len(new) and all(o.cell.kind == n.kind for o, n in zip(old, new)):
                # typing: the same cells with new text (each changed cell's whole text)
                for cell, update in zip(old, new):
                    cell.cell, cell.version = update, cell.version + 1
                change = {"textContent": [{"document": {"uri": c.uri, "version": c.version},
                                           "changes": [{"text": c.cell.source}]} for c in old]}
            else:
                opened = [self._open(uri, c) for c in new]
                notebook.cells[splice.start:splice.start + splice.delete_count] = opened
                change = {"structure": {
                    "array": {"start": splice.start, "deleteCount": splice.delete_count,
                              "cells": [_lsp_cell(c) for c in opened]},
                    "didOpen": [_text_document(c, language) for c in opened],
                    "didClose": [{"uri": c.uri} for c in old]}}
            notebook.version += 1
            messages.append(("notebookDocument/didChange", {
                "notebookDocument": {"uri": uri, "version": notebook.version}, "change": {"cells": change}}))
        return messages, [c.uri for c in notebook.cells]

    def _open(self, notebook_uri: str, cell: Cell) -> OpenCell:
        return OpenCell(f"{notebook_uri}#cell-{next(self._numbers)}", cell)


class FileSync:
    """What the server has of each file editor's document (its whole text), and the notifications
    that bring it up to date."""

    def __init__(self, max_open: int = MAX_OPEN) -> None:
        assert max_open >= 1, f"max_open must be >= 1, got {max_open}"
        self.documents: dict[str, tuple[int, str]] = {}  # uri -> (version, text), least recently used first
        self.max_open = max_open

    def sync(self, uri: str, text: str, language: str) -> list[Message]:
        """The notifications that open or update document `uri` to `text` (none when unchanged)."""
        version, known = self.documents.pop(uri, (0, None))  # put back last: the most recently used
        messages: list[Message] = []
        if known is None:
            while len(self.documents) >= self.max_open:
                oldest = next(iter(self.documents))
                del self.documents[oldest]
                messages.append(("textDocument/didClose", {"textDocument": {"uri": oldest}}))
            version = 1
            messages.append(("textDocument/didOpen", {"textDocument": {
                "uri": uri, "languageId": language, "version": version, "text": text}}))
        elif known != text:
            version += 1
            messages.append(("textDocument/didChange", {"textDocument": {"uri": uri, "version": version},
                                                        "contentChanges": [{"text": text}]}))
        self.documents[uri] = (version, text)
        return messages


def _close(uri: str, notebook: OpenNotebook) -> Message:
    return ("notebookDocument/didClose", {
        "notebookDocument": {"uri": uri}, "cellTextDocuments": [{"uri": c.uri} for c in notebook.cells]})


def _lsp_cell(cell: OpenCell) -> dict[str, Any]:
    return {"kind": LSP_CELL_KIND[cell.cell.kind], "document": cell.uri}


def _text_document(cell: OpenCell, language: str) -> dict[str, Any]:
    return {"uri": cell.uri, "languageId": language if cell.cell.kind == "code" else "markdown",
            "version": cell.version, "text": cell.cell.source}
