"""The server's copy of every open document and notebook, kept equal to the client's.

We keep our own store rather than pygls' workspace for two reasons: pygls splits lines with
`str.splitlines` (form feeds, U+2028 and friends count as line breaks there but not in LSP, so
incremental edits after them land in the wrong place), and pygls reads an unknown URI from disk
(a request for a document the client never opened must not touch the file system). Positions in
edits are converted by `edits.py` with the prompt core's line and code-unit rules (the ones that
place the cursor), so an edit and a completion agree on where a position is; a change is applied
whole or not at all.

A change that cannot be applied (a reversed range, a position inside a UTF-8 character) leaves the
document *out of sync*: the server no longer knows the client's text, so it suggests nothing for
that document (nor quotes it in another's prompt) until the client sends the whole text again, by
a `didChange` without a range or by closing and reopening it. LSP has no request asking a client
to resend a document; the error is logged (`window/logMessage`) naming the document.
"""
from __future__ import annotations

import itertools
import posixpath
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal
from urllib.parse import unquote, urlparse

from lsp_server.core.context import Encoding
from lsp_server.edits import Edit, EditError, apply_edits
from lsp_server.ignore import gitignore_rules, ignored

CellKind = Literal["code", "markdown"]


@dataclass(slots=True)
class Document:
    """One open text document (or notebook cell)."""

    uri: str
    text: str
    version: int
    language_id: str
    notebook_uri: str | None = None  # set for a notebook cell
    in_sync: bool = True  # False after a change that could not be applied, until the whole text comes again
    # when it was last opened or changed (a store-wide counter): neighbours go newest first
    touched: int = field(default=0, compare=False)


@dataclass(slots=True)
class Notebook:
    """One open notebook: its cells in order, each a document in the store."""

    uri: str
    cells: list[tuple[str, CellKind]] = field(default_factory=list)  # (cell uri, kind)


class DocumentStore:
    """Open documents and notebooks by URI; never reads anything from disk."""

    def __init__(self) -> None:
        self.documents: dict[str, Document] = {}
        self.notebooks: dict[str, Notebook] = {}
        self._clock = itertools.count(1)

    def open(self, uri: str, text: str, version: int, language_id: str, notebook_uri: str | None = None) -> None:
        """didOpen: the client's full text."""
        self.documents[uri] = Document(uri, text, version, language_id, notebook_uri, touched=next(self._clock))

    def change(self, uri: str, version: int, edits: list[Edit], encoding: Encoding) -> None:
        """didChange: apply `edits` in order, all or none; raise KeyError for a document that is not
        open and EditError (the document then out of sync, its text unchanged) for a change that
        cannot be applied. A full-text change brings an out-of-sync document back."""
        doc = self.documents[uri]
        if not doc.in_sync and not any(edit.range is None for edit in edits):
            raise EditError(f"{uri} is out of sync since an earlier change failed; send its whole text")
        try:
            doc.text = apply_edits(doc.text, edits, encoding)
        except EditError:
            doc.in_sync = False
            raise
        doc.in_sync = True
        doc.version = version
        doc.touched = next(self._clock)

    def close(self, uri: str) -> None:
        """didClose; closing an unknown document is not an error."""
        self.documents.pop(uri, None)

    def get(self, uri: str) -> Document | None:
        """The open document, or None (never read from disk)."""
        return self.documents.get(uri)

    def open_notebook(self, uri: str, cells: list[tuple[str, CellKind]], cell_docs: list[Document]) -> None:
        """notebookDocument/didOpen: the cell order and each cell's text."""
        self.notebooks[uri] = Notebook(uri, list(cells))
        for doc in cell_docs:
            self.open(doc.uri, doc.text, doc.version, doc.language_id, notebook_uri=uri)

    def splice_cells(self, uri: str, start: int, delete_count: int, new_cells: list[tuple[str, CellKind]]) -> None:
        """A structural notebook change: `delete_count` cells at `start` replaced by `new_cells`."""
        notebook = self.notebooks[uri]
        if not 0 <= start <= len(notebook.cells):
            raise ValueError(f"cell index {start} is outside the notebook's {len(notebook.cells)} cells")
        notebook.cells[start:start + delete_count] = new_cells

    def set_cell_kinds(self, notebook_uri: str, kinds: dict[str, CellKind]) -> None:
        """Cells turned from code to markdown or back (cell uri -> kind): one pass over the cells,
        however many changed."""
        notebook = self.notebooks[notebook_uri]
        if kinds:
            notebook.cells = [(u, kinds.get(u, k)) for u, k in notebook.cells]

    def set_cell_kind(self, notebook_uri: str, cell_uri: str, kind: CellKind) -> None:
        """A cell turned from code to markdown or back."""
        self.set_cell_kinds(notebook_uri, {cell_uri: kind})

    def close_notebook(self, uri: str) -> None:
        """notebookDocument/didClose: forget the notebook and its cells."""
        notebook = self.notebooks.pop(uri, None)
        if notebook is not None:
            for cell_uri, _ in notebook.cells:
                self.close(cell_uri)

    def others(self, uri: str, roots: Sequence[str] = (), exclude: Sequence[str] = (),
               hidden: Callable[[str], bool] | None = None) -> list[tuple[str, str]]:
        """(path, text) of the other open documents in the same language, for neighbour snippets,
        the most recently opened or changed first; paths as `uri_to_path` names them under the
        workspace folders `roots`; documents out of sync, whose path matches an `exclude` pattern,
        or whose URI `hidden` says to keep out, are left out."""
        doc = self.documents.get(uri)
        if doc is None:
            return []
        chosen = sorted((other for other in self.documents.values()
                         if other.uri != uri and other.notebook_uri is None and other.in_sync
                         and other.language_id == doc.language_id), key=lambda d: -d.touched)
        named = [(uri_to_path(other.uri, roots), other) for other in chosen]
        return [(path, other.text) for path, other in named
                if not excluded(path, exclude) and not (hidden is not None and hidden(other.uri))]


def apply_edit(text: str, edit: Edit, encoding: Encoding) -> str:
    """`text` after one content change (see `edits.apply_edits`)."""
    return apply_edits(text, [edit], encoding)


CASE_INSENSITIVE_FS = sys.platform in ("darwin", "win32")  # the platforms' default file systems ignore case


def excluded(path: str, patterns: Sequence[str], fold_case: bool = CASE_INSENSITIVE_FS) -> bool:
    """Whether git would ignore a document's path (as `uri_to_path` names it) under the exclude
    patterns, read as one .gitignore in the workspace folder (`lsp_server.ignore`): a pattern
    without "/" matches a name at any depth (`.env`, `*.pem`, `secrets`), a leading or inner "/"
    anchors it (`/config/*.py`), `**` crosses directories, `!` re-includes. Where the file system
    ignores case (`fold_case`), `Config/A.py` is `config/a.py` too."""
    if fold_case:
        path, patterns = path.lower(), [pattern.lower() for pattern in patterns]
    return bool(patterns) and ignored(path, [gitignore_rules(tuple(patterns))])


def uri_to_path(uri: str, roots: Sequence[str] = ()) -> str:
    """The path a prompt and a snippet header name a document by: a file URI's path relative to the
    innermost workspace folder (`roots`, as URIs) holding it, else its file name; any other URI as
    it is. Repository-relative names are what StarCoder's `<filename>` saw in training, and the
    prompt then depends on the project, never on where it was checked out (nor tells a remote
    backend the user's home directory)."""
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        return uri
    path = file_path(parsed.path)
    best = _innermost_root(path, roots)
    return str(path.relative_to(best)) if best is not None else path.name


def _innermost_root(path: PurePosixPath, roots: Sequence[str]) -> PurePosixPath | None:
    best: PurePosixPath | None = None
    for root in roots:
        r = urlparse(root)
        if r.scheme != "file":
            continue
        base = file_path(r.path)
        if path != base and path.is_relative_to(base) and (best is None or len(base.parts) > len(best.parts)):
            best = base
    return best


def repo_name(uri: str, roots: Sequence[str] = ()) -> str | None:
    """The name of the innermost workspace folder holding a file URI (StarCoder's `<reponame>`
    saw a repository's name; a workspace folder is the nearest thing), None outside every folder."""
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        return None
    best = _innermost_root(file_path(parsed.path), roots)
    return (best.name or None) if best is not None else None


def file_path(uri_path: str) -> PurePosixPath:
    """A file URI's path, percent-decoded and normalised: no `.`, `..` (`%2e%2e` included) or
    repeated slashes, so that no spelling of a path escapes its workspace folder or an exclude
    pattern."""
    return PurePosixPath(posixpath.normpath("/" + unquote(uri_path)).replace("//", "/"))


def workspace_file(uri: str, roots: Sequence[str]) -> tuple[Path, str] | None:
    """The outermost workspace folder (`roots`, as URIs) holding a file URI's document, as a local
    directory, and the document's path in it; None for other URIs and files outside every folder."""
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        return None
    path = file_path(parsed.path)
    folders = [file_path(r.path) for r in map(urlparse, roots) if r.scheme == "file"]
    holding = [folder for folder in folders if path != folder and path.is_relative_to(folder)]
    if not holding:
        return None
    folder = min(holding, key=lambda f: len(f.parts))
    return Path(folder), str(path.relative_to(folder))
