"""The JupyterLab extension (pip-installed, prebuilt) in JupyterLab 4.6 driven through chromium.

In the second cell of a notebook, typing shows the server's inline suggestion, Tab accepts it,
and the request the server answered held the cell above as context.
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.editors.code_server import free_port
from tests.editors.harness import (SERVER_SETTINGS, EditorServer, artifacts_dir, serve_command, setup_editors,
                                   wait_for)
from tests.editors.lsp_probe import server_suggestion

DRIVER = Path(__file__).parent / "editors" / "jupyter_drive.js"
TOKEN = "fim-lsp-test"
CELL_ABOVE = "def scale(values, factor):\n    return [v * factor for v in values]"
TYPED = "total = scale([1, 2], "
INLINE_SETTINGS = {"providers": {"fim-lsp": {"enabled": True, "debouncerDelay": 0, "timeout": 60000}}}


@pytest.fixture(scope="module")
def cache() -> Path:
    return setup_editors("jupyterlab")


def notebook(cells: list[str], language: str = "python") -> dict:
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": {"language_info": {"name": language}},
            "cells": [{"cell_type": "code", "id": f"c{i}", "metadata": {}, "source": s, "outputs": [],
                       "execution_count": None} for i, s in enumerate(cells)]}


class JupyterLab(EditorServer):
    """`jupyter lab` on 127.0.0.1 from the editors' venv, with private config and settings dirs."""

    def __init__(self, cache: Path, home: Path, root: Path, fim_lsp: dict):
        venv = cache / "jupyterlab" / "venv"
        config = home / "config"
        settings = home / "settings" / "@jupyterlab" / "completer-extension"
        config.mkdir(parents=True)
        settings.mkdir(parents=True)
        (config / "jupyter_server_config.json").write_text(json.dumps({"FimLsp": fim_lsp}))
        (settings / "inline-completer.jupyterlab-settings").write_text(json.dumps(INLINE_SETTINGS))
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "JUPYTER_CONFIG_DIR": str(config), "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
               "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "JUPYTER_DATA_DIR": str(home / "data"),
               "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
        self.log = open(home / "jupyter.log", "w")
        self.proc = subprocess.Popen(
            [str(venv / "bin" / "jupyter"), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
             f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}", "--LabApp.news_url=",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--allow-root"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.env = env
        self.wait_ready("JupyterLab to listen", lambda: self.get("api/status"))

    def call(self, path: str, body: dict | None = None):
        assert self.proc.poll() is None, f"jupyter lab exited: {Path(self.log.name).read_text()[-3000:]}"
        request = urllib.request.Request(f"{self.base}/{path}", method="POST" if body is not None else "GET",
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Authorization": f"token {TOKEN}"})
        try:
            with urllib.request.urlopen(request, timeout=120) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    def get(self, path: str):
        try:
            status, data = self.call(path)
        except OSError:
            return None
        return data if status == 200 else None

    def drive(self, cache: Path, notebook_path: str, typed: str, out: Path, cycle: bool = False,
              cursor: bool = False) -> dict:
        url = f"{self.base}/lab/tree/{notebook_path}?token={TOKEN}"
        env = {**self.env, "NODE_PATH": str(cache / "playwright" / "node_modules")}
        config = {"url": url, "typed": typed, "out": str(out), "cycle": cycle}
        if cursor:
            config["cursor"] = {"status": f"{self.base}/fim-lsp/status", "token": TOKEN}
        return self.run_driver(DRIVER, config, env)


def test_notebook_cell_shows_inline_suggestion_with_the_cell_above_as_context(cache, tiny_starcoder, tmp_path):
    out = artifacts_dir("jupyterlab")
    root = tmp_path / "root"
    root.mkdir()
    (root / "scale.ipynb").write_text(json.dumps(notebook([CELL_ABOVE, ""])))
    cmd = serve_command(tiny_starcoder)
    with JupyterLab(cache, tmp_path / "home", root, {"command": cmd, "settings": SERVER_SETTINGS}) as lab:
        # The proxy starts the server on first use; warm it up so the model is loaded before typing.
        warm = lab.call("fim-lsp/inline", {"path": "warm.ipynb", "cells": [{"kind": "code", "source": "x = "}],
                                           "active": 0, "offset": 4})
        assert warm[0] == 200, warm
        status = wait_for("the model to load", lambda: (s := lab.get("fim-lsp/status")) and
                          s.get("state") in ("ready", "failed") and s, timeout_s=120)
        assert status["state"] == "ready", status
        result = lab.drive(cache, "scale.ipynb", TYPED, out)
        assert "error" not in result, f"{result} (screenshots in {out})"
        recent = lab.get("fim-lsp/status")["recent_requests"]

    assert (out / "ghost.png").stat().st_size > 10_000
    cell_text = result["cellText"].replace("\u00a0", " ")
    assert cell_text.startswith(TYPED) and len(cell_text) > len(TYPED), cell_text
    inserted = cell_text[len(TYPED):]
    ghost = result["ghost"].replace("\u00a0", " ")
    # Tab accepts the completer's current suggestion. A later answer for the same keystroke (one
    # decoded further: an earlier request can end at its time budget) may replace the ghost between
    # the driver's last read and Tab; it then extends what was shown. Anything else is a bug.
    assert ghost and inserted.startswith(ghost), f"Tab inserted {inserted!r}, the ghost showed {ghost!r}"
    # The request whose answer was shown held the whole notebook: the cell above, then the typed cell,
    # the cursor at the end of the typed cell.
    shown = [r for r in recent if r["items"] and r["items"][0]["insertText"] == inserted]
    assert shown, f"no request answered {inserted!r}: {recent}"
    assert shown[-1]["cells"] == [CELL_ABOVE, TYPED] and shown[-1]["cell"] == 1
    assert (shown[-1]["line"], shown[-1]["character"]) == (0, len(TYPED))
    # And a fresh server asked about that notebook gives the same suggestion.
    notebook_uri = shown[-1]["uri"].split("#")[0]
    assert notebook_uri.endswith("/scale.ipynb")
    reference = asyncio.run(server_suggestion(cmd, notebook_uri, TYPED, 0, len(TYPED), SERVER_SETTINGS,
                                              cells=[CELL_ABOVE, TYPED]))
    assert reference and reference[0]["insertText"] == inserted
    saved = json.loads((root / "scale.ipynb").read_text())
    assert "".join(saved["cells"][1]["source"]) == TYPED + inserted


def test_asking_by_hand_offers_alternatives_and_alt_bracket_cycles_to_the_next(cache, tiny_starcoder, tmp_path):
    """(The notebook says its kernel language is Julia: the server is told so.)"""
    out = artifacts_dir("jupyterlab-cycle")
    root = tmp_path / "root"
    root.mkdir()
    (root / "scale.ipynb").write_text(json.dumps(notebook([CELL_ABOVE, ""], language="Julia")))
    with JupyterLab(cache, tmp_path / "home", root, {"command": serve_command(tiny_starcoder),
                                                     "settings": SERVER_SETTINGS}) as lab:
        warm = lab.call("fim-lsp/inline", {"path": "warm.ipynb", "cells": [{"kind": "code", "source": "x = "}],
                                           "active": 0, "offset": 4, "invoked": True})
        assert warm[0] == 200 and lab.call("fim-lsp/inline", {"path": "w.ipynb", "cells": [], "active": 0,
                                                              "offset": 0, "invoked": "yes"})[0] == 400
        wait_for("the model to load", lambda: (s := lab.get("fim-lsp/status")) and s.get("state") == "ready", 120)
        result = lab.drive(cache, "scale.ipynb", TYPED, out, cycle=True)
        assert "error" not in result, f"{result} (screenshots in {out})"
        recent = lab.get("fim-lsp/status")["recent_requests"]
    asked = [r for r in recent if r["cells"][-1] == TYPED and len(r["items"] or []) > 1]
    assert asked, f"no request by hand answered with alternatives: {recent}"
    assert asked[-1]["language"] == "julia"
    alternatives = [i["insertText"] for i in asked[-1]["items"]]
    inserted = result["cellText"].replace("\u00a0", " ")[len(TYPED):]
    # Alt+] drew the second suggestion and Tab took it (a later answer may only extend what was shown)
    assert inserted in alternatives[1:] and inserted.startswith(result["ghost"].replace("\u00a0", " ")), result
    assert inserted != alternatives[0]


def test_moving_the_cursor_and_focusing_a_cell_send_hints_the_server_takes(cache, tiny_starcoder, tmp_path):
    out = artifacts_dir("jupyterlab-cursor")
    root = tmp_path / "root"
    root.mkdir()
    (root / "scale.ipynb").write_text(json.dumps(notebook([CELL_ABOVE, ""])))
    with JupyterLab(cache, tmp_path / "home", root, {"command": serve_command(tiny_starcoder),
                                                     "settings": SERVER_SETTINGS}) as lab:
        warm = lab.call("fim-lsp/inline", {"path": "warm.ipynb", "cells": [{"kind": "code", "source": "x = "}],
                                           "active": 0, "offset": 4})
        assert warm[0] == 200, warm
        wait_for("the model to load", lambda: (s := lab.get("fim-lsp/status")) and s.get("state") == "ready", 120)
        result = lab.drive(cache, "scale.ipynb", "", out, cursor=True)
    assert "error" not in result, f"{result} (screenshots in {out})"
    before, moved, focused = result["aheadBefore"], result["aheadMoved"], result["aheadFocused"]
    # the cursor's new place in the first cell (line 2, after its indent), then the second cell's
    # start: each in that cell's document of the notebook, and none dropped
    cell = (root / "scale.ipynb").resolve().as_uri() + "#cell-"
    assert moved["last_hint"]["uri"].startswith(cell), moved
    assert (moved["last_hint"]["line"], moved["last_hint"]["character"]) == (1, 4), moved
    assert focused["last_hint"]["uri"].startswith(cell), focused
    assert focused["last_hint"]["uri"] != moved["last_hint"]["uri"], (moved, focused)
    assert (focused["last_hint"]["line"], focused["last_hint"]["character"]) == (0, 0), focused
    assert before["hints"] < moved["hints"] < focused["hints"], (before, moved, focused)
    assert focused["hints_dropped"] == 0, focused
    # a hint changes no cell
    assert [c["source"] for c in json.loads((root / "scale.ipynb").read_text())["cells"]] == [CELL_ABOVE, ""]


def test_missing_server_is_reported_once_by_the_proxy(cache, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    with JupyterLab(cache, tmp_path / "home", root, {"command": [str(tmp_path / "no-such-server"), "serve"]}) as lab:
        body = {"path": "a.ipynb", "cells": [{"kind": "code", "source": "x = "}], "active": 0, "offset": 4}
        first = lab.call("fim-lsp/inline", body)
        second = lab.call("fim-lsp/inline", body)
        bad = lab.call("fim-lsp/inline", {"path": "a.ipynb", "cells": [], "active": 0, "offset": 0})
        # a markdown cell is not completed: no items, and no server needed to say so
        markdown = lab.call("fim-lsp/inline", {"path": "a.ipynb", "cells": [{"kind": "markdown", "source": "# x"}],
                                               "active": 0, "offset": 3})
        two_cell_file = lab.call("fim-lsp/inline", {"path": "a.py", "cells": [{"kind": "code", "source": "x"}] * 2,
                                                    "active": 0, "offset": 1})
    assert first[0] == 503 and "no-such-server" in first[1]["message"] and "not found" in first[1]["message"]
    assert markdown == (200, {"items": []})
    assert two_cell_file[0] == 400 and "not a notebook" in two_cell_file[1]["message"]
    assert second == first, "the proxy should keep its verdict, not try again on every keystroke"
    assert bad[0] == 400 and "active cell 0" in bad[1]["message"]


# What the proxy tells the server about a notebook (pure; no JupyterLab needed), checked against the
# server's own handling of LSP notebook documents.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "editor-clients" / "jupyterlab"))
from fim_lsp_jupyterlab.notebook import (Cell, FileSync, NotebookSync, Splice, cell_position, diff_cells,  # noqa: E402
                                         document_cells)


def test_the_cursor_offset_in_utf16_becomes_a_position_in_the_cell():
    source = "s = '😀'\nt = s"
    assert cell_position(source, len("s = '😀'\nt = ".encode("utf-16-le")) // 2) == (1, 4)
    assert cell_position(source, 7) == (0, 7)  # after the emoji: 2 UTF-16 units
    assert cell_position("", 0) == (0, 0)


@pytest.mark.parametrize("old, new, splice", [
    ("abc", "abc", Splice(3, 0, 0)),
    ("abc", "abX", Splice(2, 1, 1)),  # typing in the last cell
    ("abc", "aXc", Splice(1, 1, 1)),
    ("abc", "abXc", Splice(2, 0, 1)),  # a cell inserted
    ("abc", "ac", Splice(1, 1, 0)),  # a cell deleted
    ("aab", "ab", Splice(1, 1, 0)),  # equal cells at both ends do not overlap
    ("abc", "acb", Splice(1, 2, 2)),  # moved
    ("", "ab", Splice(0, 0, 2)),
])
def test_diff_cells_finds_the_one_splice_between_two_cell_lists(old, new, splice):
    cells = lambda letters: [Cell("code", letter) for letter in letters]  # noqa: E731
    assert diff_cells(cells(old), cells(new)) == splice


def test_raw_cells_are_left_out_and_the_active_index_follows():
    cells = [Cell("raw", "r"), Cell("markdown", "m"), Cell("raw", "r2"), Cell("code", "x")]
    assert document_cells(cells, 3) == ([Cell("markdown", "m"), Cell("code", "x")], 1)


@pytest.mark.parametrize("cells, active, message", [
    ([Cell("code", "x")], 1, "active cell 1 is not one of the 1 cells"),
    ([], 0, "active cell 0 is not one of the 0 cells"),
    ([Cell("heading", "x")], 0, "not 'heading'"),
])
def test_bad_requests_are_value_errors(cells, active, message):
    with pytest.raises(ValueError, match=message):
        document_cells(cells, active)
    with pytest.raises(ValueError, match="past the end of the cell"):
        cell_position("x", 5)


def test_the_servers_copy_of_a_notebook_follows_typing_inserts_deletes_moves_and_a_kernel_change():
    """Each sync's notifications, run through the server's own notebook handlers, leave the server
    with exactly the notebook the browser has; typing sends text changes, not new cells."""
    from types import SimpleNamespace

    from lsprotocol import types
    from pygls.protocol import default_converter

    from lsp_server import server as lsp
    from lsp_server.completion import CompletionService
    from lsp_server.documents import DocumentStore
    from lsp_server.core.languages import line_comment
    from lsp_server.core.notebook import Cell as ServerCell
    from lsp_server.core.notebook import notebook_text

    store, quiet = DocumentStore(), lambda *a: None
    completions = CompletionService(store, SimpleNamespace(cancel=lambda key: None), SimpleNamespace(backend=None),
                                    quiet, quiet)
    ls = SimpleNamespace(store=store, encoding="utf-16", completions=completions, log=quiet,
                         background=SimpleNamespace(edited=lambda *a: None))
    handlers = {"notebookDocument/didOpen": (lsp.notebook_document_did_open, types.DidOpenNotebookDocumentParams),
                "notebookDocument/didChange": (lsp.notebook_document_did_change, types.DidChangeNotebookDocumentParams),
                "notebookDocument/didClose": (lsp.notebook_document_did_close, types.DidCloseNotebookDocumentParams)}
    converter = default_converter()
    sync, uri = NotebookSync(), "file:///w/analysis.ipynb"
    steps = [
        ("python", [Cell("markdown", "Load"), Cell("code", "import os"), Cell("code", "")]),
        ("python", [Cell("markdown", "Load"), Cell("code", "import os"), Cell("code", "x = 1")]),  # typing
        ("python", [Cell("markdown", "Load"), Cell("code", "import os"), Cell("code", "y"), Cell("code", "x = 1")]),
        ("python", [Cell("code", "import os"), Cell("code", "y"), Cell("code", "x = 1")]),  # markdown deleted
        ("python", [Cell("code", "x = 1"), Cell("code", "y"), Cell("code", "import os")]),  # moved
        ("python", [Cell("code", "x = 1"), Cell("markdown", "y"), Cell("code", "import os")]),  # kind changed
        ("javascript", [Cell("code", "x = 1"), Cell("markdown", "y"), Cell("code", "let a")]),  # another kernel
    ]
    for language, cells in steps:
        messages, cell_uris = sync.sync(uri, cells, language)
        assert messages, "every step changes something"
        for method, params in messages:
            handler, params_type = handlers[method]
            handler(ls, converter.structure(params, params_type))
        notebook = ls.store.notebooks[uri]
        assert [u for u, _ in notebook.cells] == cell_uris
        assert [k for _, k in notebook.cells] == [c.kind for c in cells]
        assert [ls.store.get(u).text for u in cell_uris] == [c.source for c in cells]
        code = cell_uris[[c.kind for c in cells].index("code")]
        view, _ = ls.completions.notebook_view(uri, code, types.Position(0, 0), "utf-16")
        assert view == notebook_text([ServerCell(c.kind, c.source) for c in cells], language)[0]
        assert line_comment(language) + " %%" in view
    typing = sync.sync(uri, [Cell("code", "x = 1"), Cell("markdown", "y"), Cell("code", "let ab")], "javascript")[0]
    assert [m for m, _ in typing] == ["notebookDocument/didChange"]
    assert list(typing[0][1]["change"]["cells"]) == ["textContent"]
    assert sync.sync(uri, [Cell("code", "x = 1"), Cell("markdown", "y"), Cell("code", "let ab")], "javascript")[0] == []


def server_copy():
    """A server state with its own document handlers, and a function that applies notifications."""
    from types import SimpleNamespace

    from lsprotocol import types
    from pygls.protocol import default_converter

    from lsp_server import server as lsp
    from lsp_server.completion import CompletionService
    from lsp_server.documents import DocumentStore

    store, quiet = DocumentStore(), lambda *a: None
    completions = CompletionService(store, SimpleNamespace(cancel=lambda key: None), SimpleNamespace(backend=None),
                                    quiet, quiet)
    ls = SimpleNamespace(store=store, encoding="utf-16", completions=completions, log=quiet,
                         background=SimpleNamespace(edited=lambda *a: None))
    handlers = {"notebookDocument/didOpen": (lsp.notebook_document_did_open, types.DidOpenNotebookDocumentParams),
                "notebookDocument/didChange": (lsp.notebook_document_did_change, types.DidChangeNotebookDocumentParams),
                "notebookDocument/didClose": (lsp.notebook_document_did_close, types.DidCloseNotebookDocumentParams),
                "textDocument/didOpen": (lsp.text_document_did_open, types.DidOpenTextDocumentParams),
                "textDocument/didChange": (lsp.text_document_did_change, types.DidChangeTextDocumentParams),
                "textDocument/didClose": (lsp.text_document_did_close, types.DidCloseTextDocumentParams)}
    converter = default_converter()

    def apply(messages) -> list[str]:
        for method, params in messages:
            handler, params_type = handlers[method]
            handler(ls, converter.structure(params, params_type))
        return [method for method, _ in messages]

    return ls, apply


def test_the_server_keeps_the_notebooks_completed_most_recently_and_reopens_one_asked_again():
    ls, apply = server_copy()
    sync = NotebookSync(max_open=2)
    a, b, c = (f"file:///w/{name}.ipynb" for name in "abc")
    cells = {uri: [Cell("markdown", f"# {uri[-7]}"), Cell("code", f"x = '{uri[-7]}'")] for uri in (a, b, c)}
    assert apply(sync.sync(a, cells[a], "python")[0]) == ["notebookDocument/didOpen"]
    b_messages, b_cells = sync.sync(b, cells[b], "python")
    apply(b_messages)
    assert apply(sync.sync(a, cells[a], "python")[0]) == []  # completed again, unchanged: now the latest
    assert apply(sync.sync(c, cells[c], "python")[0]) == ["notebookDocument/didClose", "notebookDocument/didOpen"]
    assert set(ls.store.notebooks) == {a, c}, "b was used longest ago"
    assert all(ls.store.get(u) is None for u in b_cells), "its cells' documents are closed too"
    # b is completed again: opened afresh (a goes now), the server has its cells as before
    messages, again = sync.sync(b, cells[b], "python")
    assert apply(messages) == ["notebookDocument/didClose", "notebookDocument/didOpen"]
    assert set(ls.store.notebooks) == {b, c} and set(again).isdisjoint(b_cells)
    assert [ls.store.get(u).text for u in again] == [cell.source for cell in cells[b]]


def test_the_server_keeps_the_files_completed_most_recently():
    ls, apply = server_copy()
    files = FileSync(max_open=2)
    a, b, c = (f"file:///w/{name}.py" for name in "abc")
    assert apply(files.sync(a, "import os", "python")) == ["textDocument/didOpen"]
    assert apply(files.sync(b, "x = 1", "python")) == ["textDocument/didOpen"]
    assert apply(files.sync(a, "import os\n", "python")) == ["textDocument/didChange"]  # typing: a is the latest
    assert apply(files.sync(a, "import os\n", "python")) == []
    assert apply(files.sync(c, "y = 2", "python")) == ["textDocument/didClose", "textDocument/didOpen"]
    assert ls.store.get(b) is None and ls.store.get(a).text == "import os\n" and ls.store.get(c).text == "y = 2"
    assert apply(files.sync(b, "x = 1", "python")) == ["textDocument/didClose", "textDocument/didOpen"]
    assert ls.store.get(a) is None and ls.store.get(b).text == "x = 1"
