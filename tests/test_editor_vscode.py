"""The VS Code extension (.vsix) in code-server, driven through chromium, against `fim-lsp serve`.

Typing in a Python file shows the server's suggestion as ghost text in the DOM, Tab accepts it,
and the saved file holds it. A language turned off (`fim-lsp.enable`) asks the server nothing until
the toggle command turns it on. A missing server gives one clear notification and the editor still
edits.
"""
from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from tests.editors.code_server import CodeServer
from tests.editors.harness import SERVER_SETTINGS, artifacts_dir, printable_run, serve_command, setup_editors
from tests.editors.lsp_probe import server_suggestion

SOURCE = "import os\n\n\ndef scale(values, factor):\n    return [v * factor for v in values]\n\n\ntotal = "
TYPED = "scale([1, 2], "


@pytest.fixture(scope="module")
def cache() -> Path:
    return setup_editors("vscode")


def extension_settings(cmd: list[str]) -> dict:
    """User settings that start `cmd` (an executable and `serve ...`) with the test's server settings,
    the dtype given on the command line (`extraArgs`) rather than as a setting: the extension must not
    override it with the setting's default."""
    settings = {"fim-lsp.command": cmd[0], "fim-lsp.extraArgs": [*cmd[2:], "--dtype", SERVER_SETTINGS["dtype"]]}
    settings.update({f"fim-lsp.{k}": v for k, v in SERVER_SETTINGS.items() if k != "dtype"})
    return settings


def visible(text: str) -> str:
    """What a DOM shows of `text`, compared across the two: non-breaking spaces as spaces, and only
    the printable ASCII (Monaco draws control characters as symbols)."""
    return "".join(ch for ch in text.replace("\u00a0", " ") if " " <= ch <= "~")


def scale_workspace(tmp_path: Path) -> tuple[Path, Path]:
    """A workspace folder holding scale.py (SOURCE); the folder and the file."""
    workspace = tmp_path / "ws"
    workspace.mkdir()
    file = workspace / "scale.py"
    file.write_text(SOURCE)
    return workspace, file


def test_typing_shows_ghost_text_and_tab_accepts_it(cache, tiny_starcoder, tmp_path):
    out = artifacts_dir("vscode")
    workspace, file = scale_workspace(tmp_path)
    cmd = serve_command(tiny_starcoder)
    assert cmd[1] == "serve", f"the test starts the fim-lsp executable directly: {cmd}"
    with CodeServer(cache, tmp_path / "home", workspace, extension_settings(cmd)) as vscode:
        result = vscode.drive(file=file.name, typed=TYPED, statusPattern=f"{tiny_starcoder.name} · ", out=str(out))
    assert "error" not in result, f"{result} (screenshots in {out})"
    assert (out / "ghost.png").stat().st_size > 10_000 and (out / "accepted.png").stat().st_size > 10_000
    assert "torch" in result["statusBefore"] or "onnx" in result["statusBefore"], result["statusBefore"]
    assert "ms" in result["statusAfter"], f"no latency in the status bar: {result['statusAfter']!r}"
    # Accepting ran the item's command on the server (fim-lsp.accepted), as Show Status reports.
    assert "accepted: 1 of" in result["statusReport"], result["statusReport"]
    # The command line's --dtype held: the extension sent no default for it.
    assert f", {SERVER_SETTINGS['dtype']}" in result["statusReport"], result["statusReport"]

    saved = file.read_text()
    assert saved.startswith(SOURCE + TYPED), saved
    inserted = saved[len(SOURCE + TYPED):]
    assert inserted, "Tab inserted nothing"
    # The DOM showed what Tab inserted.
    assert visible(result["ghost"]).strip() == visible(inserted).strip()
    # And it is what the server answers for that buffer and cursor.
    line = (SOURCE + TYPED).count("\n")
    character = len((SOURCE + TYPED).rsplit("\n", 1)[1])
    reference = asyncio.run(server_suggestion(cmd, file.as_uri(), SOURCE + TYPED, line, character, SERVER_SETTINGS))
    assert reference and reference[0]["insertText"] == inserted
    assert printable_run(inserted) in visible(result["ghost"])


def test_show_next_inline_suggestion_draws_the_servers_alternative_and_tab_takes_it(cache, tiny_starcoder, tmp_path):
    out = artifacts_dir("vscode-cycle")
    workspace, file = scale_workspace(tmp_path)
    cmd = serve_command(tiny_starcoder)
    with CodeServer(cache, tmp_path / "home", workspace, extension_settings(cmd)) as vscode:
        result = vscode.drive(file=file.name, typed=TYPED, statusPattern=f"{tiny_starcoder.name} · ", out=str(out),
                              cycle=True)
    assert "error" not in result, f"{result} (screenshots in {out})"
    saved = file.read_text()
    inserted = saved[len(SOURCE + TYPED):]
    assert saved.startswith(SOURCE + TYPED) and inserted, saved
    assert visible(result["ghost"]).strip() == visible(inserted).strip()
    line = (SOURCE + TYPED).count("\n")
    character = len((SOURCE + TYPED).rsplit("\n", 1)[1])
    reference = asyncio.run(server_suggestion(cmd, file.as_uri(), SOURCE + TYPED, line, character, SERVER_SETTINGS))
    alternatives = [item["insertText"] for item in reference]
    assert len(alternatives) > 1 and inserted in alternatives[1:] and inserted != alternatives[0], (
        inserted, alternatives)


def test_a_language_turned_off_asks_nothing_until_the_toggle_turns_it_on(cache, tiny_starcoder, tmp_path):
    out = artifacts_dir("vscode-toggle")
    workspace, file = scale_workspace(tmp_path)
    cmd = serve_command(tiny_starcoder)
    settings = {**extension_settings(cmd), "fim-lsp.enable": {"*": True, "python": False}}
    with CodeServer(cache, tmp_path / "home", workspace, settings) as vscode:
        result = vscode.drive(file=file.name, typed=TYPED, statusPattern=f"{tiny_starcoder.name} · off", toggle=True,
                              statusOnPattern=f"{tiny_starcoder.name} · (torch|onnx)", out=str(out))
        user_settings = json.loads((vscode.data / "User" / "settings.json").read_text())
    assert "error" not in result, f"{result} (screenshots in {out})"
    assert result["ghostWhileOff"] == 0, result
    # Off means the server was never asked: it has shown nothing.
    assert "accepted: 0 of 0 shown" in result["reportWhileOff"], result["reportWhileOff"]
    assert tiny_starcoder.name in result["statusOn"], result
    # The toggle kept the other languages' entries and turned python on where the user keeps settings.
    assert user_settings["fim-lsp.enable"] == {"*": True, "python": True}, user_settings
    saved = file.read_text()
    inserted = saved[len(SOURCE + TYPED):]
    assert saved.startswith(SOURCE + TYPED) and inserted, saved
    assert visible(result["ghost"]).strip() == visible(inserted).strip()


def hints(report: str) -> tuple[int, int]:
    """(taken, dropped) from the Show Status report's cursor-hints line (the server's `fim-lsp/status`)."""
    found = re.search(r"cursor hints: (\d+) taken, (\d+) dropped", report)
    assert found, f"no cursor hints in the status report: {report!r}"
    return int(found[1]), int(found[2])


def test_moving_the_cursor_and_switching_files_send_hints_the_server_takes(cache, tiny_starcoder, tmp_path):
    out = artifacts_dir("vscode-cursor")
    workspace, file = scale_workspace(tmp_path)
    (workspace / "other.py").write_text("print('other')\n")
    cmd = serve_command(tiny_starcoder)
    with CodeServer(cache, tmp_path / "home", workspace, extension_settings(cmd)) as vscode:
        # no typing: the cursor goes to line 4, column 5 (VS Code counts from 1), then other.py opens
        result = vscode.drive(file=file.name, typed="", statusPattern=f"{tiny_starcoder.name} · ", out=str(out),
                              cursor={"line": 4, "column": 5, "other": "other.py"})
    assert "error" not in result, f"{result} (screenshots in {out})"
    before, moved, switched = (hints(result[k]) for k in ("reportBefore", "reportMoved", "reportSwitched"))
    # the server took a hint at the cursor's new place, in scale.py, then one for other.py; it dropped none
    assert "last in scale.py at Ln 4, Col 5" in result["reportMoved"], result["reportMoved"]
    assert "last in other.py at Ln 1, Col 1" in result["reportSwitched"], result["reportSwitched"]
    assert before[0] < moved[0] < switched[0], (before, moved, switched)
    assert before[1] == moved[1] == switched[1] == 0, (before, moved, switched)
    # a hint changes no document
    assert file.read_text() == SOURCE and (workspace / "other.py").read_text() == "print('other')\n"


@pytest.mark.parametrize("broken", ["missing", "crashing"])
def test_broken_server_gives_one_notification_and_editing_goes_on(cache, tmp_path, broken):
    out = artifacts_dir(f"vscode-{broken}")
    workspace = tmp_path / "ws"
    workspace.mkdir()
    file = workspace / "a.py"
    file.write_text("x = 1\n")
    server = tmp_path / "no-such-server"
    starts = tmp_path / "starts.txt"
    if broken == "crashing":  # counts its starts, then dies the way a bad model path would
        server.write_text(f"#!/bin/sh\necho x >> {starts}\necho 'fim-lsp: cannot load model' >&2\nexit 1\n")
        server.chmod(0o755)
    # A crash at start is announced by vscode-languageclient itself; the extension adds nothing to it.
    expected = "was not found" if broken == "missing" else "couldn't create connection to server"
    with CodeServer(cache, tmp_path / "home", workspace, {"fim-lsp.command": str(server)}) as vscode:
        result = vscode.drive(file=file.name, typed="y = 2", statusPattern="fim-lsp", out=str(out),
                              expectNotification=expected, timeoutMs=90000)
    assert "error" not in result, f"{result} (screenshots in {out})"
    assert result["notifications"] == 1, result
    if broken == "missing":
        assert "no-such-server" in result["notificationText"]
    else:
        assert starts.read_text() == "x\n", "the extension started the crashing server more than once"
    assert file.read_text() == "x = 1\ny = 2"
