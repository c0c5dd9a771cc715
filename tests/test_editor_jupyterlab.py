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


def notebook(cells: list[str]) -> dict:
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": {"language_info": {"name": "python"}},
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

    def drive(self, cache: Path, notebook_path: str, typed: str, out: Path, cycle: bool = False) -> dict:
        url = f"{self.base}/lab/tree/{notebook_path}?token={TOKEN}"
        env = {**self.env, "NODE_PATH": str(cache / "playwright" / "node_modules")}
        return self.run_driver(DRIVER, {"url": url, "typed": typed, "out": str(out), "cycle": cycle}, env)


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
    # The request whose answer was shown held the whole notebook: the cell above, then the typed cell.
    shown = [r for r in recent if r["items"] and r["items"][0]["insertText"] == inserted]
    assert shown, f"no request answered {inserted!r}: {recent}"
    assert shown[-1]["text"] == CELL_ABOVE + "\n\n" + TYPED
    assert (shown[-1]["line"], shown[-1]["character"]) == (CELL_ABOVE.count("\n") + 2, len(TYPED))
    # And a fresh server asked about that document gives the same suggestion.
    reference = asyncio.run(server_suggestion(cmd, shown[-1]["uri"], shown[-1]["text"], shown[-1]["line"],
                                              shown[-1]["character"], SERVER_SETTINGS))
    assert reference and reference[0]["insertText"] == inserted
    saved = json.loads((root / "scale.ipynb").read_text())
    assert "".join(saved["cells"][1]["source"]) == TYPED + inserted


def test_asking_by_hand_offers_alternatives_and_alt_bracket_cycles_to_the_next(cache, tiny_starcoder, tmp_path):
    out = artifacts_dir("jupyterlab-cycle")
    root = tmp_path / "root"
    root.mkdir()
    (root / "scale.ipynb").write_text(json.dumps(notebook([CELL_ABOVE, ""])))
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
    asked = [r for r in recent if r["text"].endswith(TYPED) and len(r["items"] or []) > 1]
    assert asked, f"no request by hand answered with alternatives: {recent}"
    alternatives = [i["insertText"] for i in asked[-1]["items"]]
    inserted = result["cellText"].replace("\u00a0", " ")[len(TYPED):]
    # Alt+] drew the second suggestion and Tab took it (a later answer may only extend what was shown)
    assert inserted in alternatives[1:] and inserted.startswith(result["ghost"].replace("\u00a0", " ")), result
    assert inserted != alternatives[0]


def test_missing_server_is_reported_once_by_the_proxy(cache, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    with JupyterLab(cache, tmp_path / "home", root, {"command": [str(tmp_path / "no-such-server"), "serve"]}) as lab:
        body = {"path": "a.ipynb", "cells": [{"kind": "code", "source": "x = "}], "active": 0, "offset": 4}
        first = lab.call("fim-lsp/inline", body)
        second = lab.call("fim-lsp/inline", body)
        bad = lab.call("fim-lsp/inline", {"path": "a.ipynb", "cells": [], "active": 0, "offset": 0})
    assert first[0] == 503 and "no-such-server" in first[1]["message"] and "not found" in first[1]["message"]
    assert second == first, "the proxy should keep its verdict, not try again on every keystroke"
    assert bad[0] == 400 and "active cell 0" in bad[1]["message"]


# The notebook-to-document mapping the proxy uses (pure; no JupyterLab needed).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "editor-clients" / "jupyterlab"))
from fim_lsp_jupyterlab.notebook import Cell, notebook_document  # noqa: E402


def test_notebook_document_joins_cells_and_maps_the_cursor():
    cells = [Cell("markdown", "Scale a list\n\nby a factor"), Cell("code", "import os"), Cell("raw", "skip me"),
             Cell("code", "s = '😀'\nt = s")]
    text, line, character = notebook_document(cells, active=3, offset=len("s = '😀'\nt = ".encode("utf-16-le")) // 2)
    assert text == "# Scale a list\n#\n# by a factor\n\nimport os\n\ns = '😀'\nt = s"
    assert (line, character) == (7, 4)
    assert notebook_document(cells, active=3, offset=7) == (text, 6, 7)  # after the emoji: 2 UTF-16 units


@pytest.mark.parametrize("cells, active, offset, message", [
    ([Cell("code", "x")], 1, 0, "active cell 1 is not one of the 1 cells"),
    ([Cell("markdown", "x")], 0, 0, "markdown cell, not code"),
    ([Cell("code", "x")], 0, 5, "past the end of the cell"),
])
def test_notebook_document_rejects_bad_requests(cells, active, offset, message):
    with pytest.raises(ValueError, match=message):
        notebook_document(cells, active, offset)
