"""The Neovim plugin in a real Neovim 0.11 against the real `fim-lsp serve`.

Typing in a Python buffer shows the server's suggestion as ghost text (an extmark, and on the
terminal screen), Tab inserts it, and the buffer then holds it; `:FimLspToggle` turns asking off and
on again. A missing or crashing server gives
one message and the editor keeps working.
"""
from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.editors.harness import (SERVER_SETTINGS, artifacts_dir, printable_run, serve_command,
                                   setup_editors, wait_for)
from tests.editors.lsp_probe import server_suggestion
from tests.editors.nvim_driver import NvimSession

SOURCE = "import os\n\n\ndef scale(values, factor):\n    return [v * factor for v in values]\n\n\ntotal = \n"
TYPED = "scale([1, 2], "


@pytest.fixture(scope="module")
def nvim() -> Path:
    cache = setup_editors("neovim")  # installs tmux too: Neovim gets a real terminal
    assert shutil.which("tmux"), "tmux is needed to give Neovim a terminal (apt-get install tmux)"
    return cache / "bin" / "nvim"


def ghost(session: NvimSession):
    return session.lua("require('fim_lsp.ghost').current(0)")


def server_state(session: NvimSession):
    """The server's `fim-lsp/status` state as seen from inside the editor (None until it answers)."""
    return session.lua("(function() local c = require('fim_lsp').client(0) "
                       "if not c or not c.initialized then return nil end "
                       "local r = c:request_sync('fim-lsp/status', {}, 2000, 0) "
                       "return r and r.result end)()")


# The inline completions this editor's fim-lsp client has sent since the first evaluation (which
# wraps the client's `request` to count them).
COUNT_SENT = ("(function() local c = require('fim_lsp').client(0) "
              "if not c.fim_sent then local send = c.request c.fim_sent = 0 "
              "c.request = function(self, method, ...) "
              "if method == 'textDocument/inlineCompletion' then c.fim_sent = c.fim_sent + 1 end "
              "return send(self, method, ...) end end "
              "return c.fim_sent end)()")
# False until a timer started at the first evaluation fires, twice the debounce later. Timers
# started earlier with the debounce fire first, and their request is sent before this one's flag is
# set (both run on the editor's main loop, in order): a barrier with no wall-clock bound of its own.
AFTER_DEBOUNCE = ("(function() if _G.fim_barrier == nil then _G.fim_barrier = false "
                  "vim.defer_fn(function() _G.fim_barrier = true end, 2 * require('fim_lsp').config.debounce_ms) "
                  "end return _G.fim_barrier end)()")


def test_typing_shows_ghost_text_and_tab_accepts_it(nvim, tiny_starcoder, tmp_path):
    out = artifacts_dir("neovim")
    file = tmp_path / "scale.py"
    file.write_text(SOURCE)
    cmd = serve_command(tiny_starcoder)
    with NvimSession(nvim, tmp_path, file, {"cmd": cmd, "server": SERVER_SETTINGS}) as session:
        status = wait_for("the model to load", lambda: (s := server_state(session)) and
                          s.get("state") in ("ready", "failed") and s, timeout_s=120)
        assert status["state"] == "ready", f"model failed to load: {status}"

        session.keys("G", "A")
        session.type(TYPED)
        shown = wait_for("ghost text", lambda: ghost(session), timeout_s=60)
        screen = session.screen()
        (out / "ghost.txt").write_text(screen)

        lines_before = session.lua("vim.api.nvim_buf_get_lines(0, 0, -1, true)")
        text_before = session.lua("table.concat(vim.api.nvim_buf_get_lines(0, 0, -1, true), '\\n')"
                                  " .. (vim.bo.eol and '\\n' or '')")  # what the server was sent
        row, col = shown["row"], shown["col"]
        typed = lines_before[row][:col]
        assert typed == SOURCE.splitlines()[-1] + TYPED, f"cursor line before accepting: {lines_before[row]!r}"
        # The ghost is what the server suggests beyond what was typed, drawn on the cursor's line.
        assert shown["text"].endswith(shown["ghost"]) and shown["ghost"]
        cursor_line = next(line for line in screen.splitlines() if line.startswith(typed))
        visible = printable_run(shown["ghost"].splitlines()[0])
        if visible:
            assert visible in cursor_line, f"ghost {visible!r} not on screen line {cursor_line!r}"

        session.keys("Tab")
        wait_for("Tab to insert the suggestion", lambda: ghost(session) is None and
                 session.lua("vim.api.nvim_get_current_line()") != lines_before[row])
        (out / "accepted.txt").write_text(session.screen())
        lines_after = session.lua("vim.api.nvim_buf_get_lines(0, 0, -1, true)")
        expected = "\n".join(lines_before[:row] + [typed + shown["ghost"] + lines_before[row][col:]]
                             + lines_before[row + 1:])
        assert "\n".join(lines_after) == expected
        assert session.lua("vim.api.nvim_get_mode().mode") == "i", "accepting left insert mode"
        accepted = wait_for("the server to count the accept",
                            lambda: (server_state(session) or {}).get("acceptance", {}).get("accepted"))
        assert accepted == 1
        last = server_state(session)["last"]
        assert last["reused"] is False, f"the suggestion continued an earlier one: {last}"

        # :FimLspToggle turns suggestions off in the buffer: typing on asks the server nothing
        session.lua(COUNT_SENT)  # from here the client counts the completions it asks for
        assert session.lua("(function() vim.cmd('FimLspToggle') return require('fim_lsp').enabled(0) end)()") is False
        sent = session.lua(COUNT_SENT)
        session.type(" + 1")
        wait_for("the keys typed while off", lambda: session.lua("vim.api.nvim_get_current_line()").endswith(" + 1"))
        wait_for("a timer started after the keys, longer than the debounce", lambda: session.lua(AFTER_DEBOUNCE))
        assert ghost(session) is None and session.lua(COUNT_SENT) == sent, "asked while suggestions were off"
        assert session.lua("(function() vim.cmd('FimLspToggle') return require('fim_lsp').enabled(0) end)()") is True
        session.type(" ")
        wait_for("a request once toggled on", lambda: session.lua(COUNT_SENT) > sent, timeout_s=60)
        wait_for("ghost text once toggled on", lambda: ghost(session), timeout_s=60)

    # It was computed for this buffer alone (not a continuation of an earlier suggestion), so a
    # fresh server asked about the same buffer and cursor gives the text the editor showed.
    reference = asyncio.run(server_suggestion(cmd, file.as_uri(), text_before, row, col,
                                              SERVER_SETTINGS))
    assert reference and reference[0]["insertText"] == shown["text"]


def test_accepting_a_word_then_typing_keeps_the_rest_drawn_then_tab_takes_it(nvim, tiny_starcoder, tmp_path):
    file = tmp_path / "scale.py"
    file.write_text(SOURCE)
    # A long debounce: what is drawn between an edit and the next answer is the client's own doing.
    setup = {"cmd": serve_command(tiny_starcoder), "server": SERVER_SETTINGS, "debounce_ms": 4000}
    with NvimSession(nvim, tmp_path, file, setup) as session:
        wait_for("the model to load", lambda: (s := server_state(session)) and s.get("state") == "ready", 120)
        session.keys("G", "A")
        session.type(TYPED)
        first = wait_for("ghost text", lambda: ghost(session), timeout_s=60)
        row, col, text = first["row"], first["col"], first["ghost"]
        start = session.lua("vim.api.nvim_get_current_line()")[:col]
        word = session.lua(f"require('fim_lsp.ghost').next_part({json.dumps(text)}, 'word')")
        assert 0 < len(word) < len(text) - 1, f"the suggestion {text!r} should hold more than one word"
        asked = server_state(session)["latency"]["count"]

        session.keys("M-Right")  # the next word goes in; its rest is drawn at once
        now = wait_for("the word inserted",
                       lambda: (g := ghost(session)) and g["col"] == col + len(word.encode()) and g)
        assert session.lua("vim.api.nvim_get_current_line()") == start + word
        assert now["ghost"] == text[len(word):] and now["row"] == row

        typed = text[len(word)]  # typing the suggestion's next character keeps the rest drawn too
        session.type(typed)
        now = wait_for("the typed character followed",
                       lambda: (g := ghost(session)) and g["col"] == col + len((word + typed).encode()) and g)
        assert now["ghost"] == text[len(word) + 1:]
        assert server_state(session)["latency"]["count"] == asked, "the rest was drawn by asking the server"

        # Tab takes the rest: the line holds the whole suggestion, and one accept is counted.
        session.keys("Tab")
        wait_for("the rest accepted", lambda: ghost(session) is None and
                 session.lua("vim.api.nvim_get_current_line()") == start + text)
        assert wait_for("the accept counted", lambda: server_state(session)["acceptance"]["accepted"]) == 1
        assert session.lua("vim.api.nvim_get_mode().mode") == "i"


def test_next_and_previous_cycle_through_the_servers_alternatives_and_tab_takes_the_one_drawn(
        nvim, tiny_starcoder, tmp_path):
    file = tmp_path / "scale.py"
    file.write_text(SOURCE)
    cmd = serve_command(tiny_starcoder)
    with NvimSession(nvim, tmp_path, file, {"cmd": cmd, "server": SERVER_SETTINGS}) as session:
        wait_for("the model to load", lambda: (s := server_state(session)) and s.get("state") == "ready", 120)
        session.keys("G", "A")
        session.type(TYPED)
        first = wait_for("ghost text", lambda: ghost(session), timeout_s=60)
        assert (first["index"], first["count"]) == (1, 1), "typing asks for one suggestion"
        text_before = session.lua("table.concat(vim.api.nvim_buf_get_lines(0, 0, -1, true), '\\n')"
                                  " .. (vim.bo.eol and '\\n' or '')")
        start = session.lua("vim.api.nvim_get_current_line()")[:first["col"]]

        session.keys("M-]")  # asks by hand: the answer holds alternatives; the second is drawn
        second = wait_for("an alternative", lambda: (g := ghost(session)) and g["count"] > 1 and g)
        assert second["index"] == 2 and second["text"] != first["text"]
        session.keys("M-]")
        third = wait_for("the next one", lambda: (g := ghost(session)) and g["index"] != 2 and g)
        assert third["index"] == (3 if second["count"] == 3 else 1)  # the third, or round to the first
        session.keys("M-[")
        back = wait_for("the previous one", lambda: (g := ghost(session)) and g["index"] == 2 and g)
        assert back["text"] == second["text"]

        session.keys("Tab")
        wait_for("the alternative accepted", lambda: ghost(session) is None and
                 session.lua("vim.api.nvim_get_current_line()") == start + second["text"])
    # the alternatives are the server's: a fresh server asked by hand lists the same second item
    reference = asyncio.run(server_suggestion(cmd, file.as_uri(), text_before, first["row"], first["col"],
                                              SERVER_SETTINGS))
    assert len(reference) == second["count"] and reference[1]["insertText"] == second["text"]


def test_moving_the_cursor_and_entering_a_buffer_send_hints_the_server_takes(nvim, tiny_starcoder, tmp_path):
    file, other = tmp_path / "scale.py", tmp_path / "other.py"
    file.write_text(SOURCE)
    other.write_text("print('other')\n")
    setup = {"cmd": serve_command(tiny_starcoder), "server": SERVER_SETTINGS}
    with NvimSession(nvim, tmp_path, file, setup) as session:
        wait_for("the model to load", lambda: (s := server_state(session)) and s.get("state") == "ready", 120)
        before = server_state(session)["ahead"]
        session.keys("g", "g", "3", "j", "4", "l")  # normal mode, no typing: line 4, after "def "
        moved = wait_for("the server to take the hint at the cursor", lambda: (a := server_state(session)["ahead"])
                         and a["last_hint"] == {"uri": file.as_uri(), "line": 3, "character": 4} and a)
        session.keys(":", "e", " ", "o", "t", "h", "e", "r", ".", "p", "y", "Enter")  # BufEnter in another buffer
        switched = wait_for("the server to take the hint for the buffer entered",
                            lambda: (a := server_state(session)["ahead"])
                            and a["last_hint"] == {"uri": other.as_uri(), "line": 0, "character": 0} and a)
        assert before["hints"] < moved["hints"] < switched["hints"], (before, moved, switched)
        assert switched["hints_dropped"] == 0, switched
        assert session.lua("vim.bo.modified") is False, "a hint changes no buffer"
    assert file.read_text() == SOURCE


@pytest.mark.parametrize("broken", ["missing", "crashing"])
def test_broken_server_gives_one_message_and_editing_goes_on(nvim, tmp_path, broken):
    out = artifacts_dir(f"neovim-{broken}")
    starts = tmp_path / "starts.txt"
    if broken == "missing":
        cmd = [str(tmp_path / "no-such-server"), "serve"]
    else:  # counts its starts, then dies the way a bad model path or an import error would
        cmd = [sys.executable, "-c",
               f"open({str(starts)!r}, 'a').write('x'); import sys; sys.exit('fim-lsp: cannot load model')"]
    file = tmp_path / "a.py"
    file.write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 2\n")
    with NvimSession(nvim, tmp_path, file, {"cmd": cmd}) as session:
        shown = "' not found" if broken == "missing" else "fim-lsp quit with exit code 1"
        screen = wait_for("the message on screen", lambda: shown in (s := session.screen().replace("\n", "")) and s, 30)
        (out / "message.txt").write_text(session.screen())
        if "Press ENTER" in screen:
            session.keys("Enter")
        reason = session.lua("require('fim_lsp').failure()")
        assert ("not found" if broken == "missing" else "server exited (code 1") in reason
        session.keys("G", "o")
        session.type("z = 3")
        session.keys("Tab", "Escape")
        session.keys(":", "e", " ", "b", ".", "p", "y", "Enter")  # another Python buffer: no new start
        wait_for("the second buffer", lambda: session.lua("vim.fn.expand('%:t')") == "b.py")
        session.keys(":", "e", " ", "a", ".", "p", "y", "Enter")
        (out / "screen.txt").write_text(session.screen())
        lines = session.lua("vim.api.nvim_buf_get_lines(0, 0, -1, true)")
        assert lines[0] == "x = 1" and lines[1].rstrip() == "z = 3" and lines[1] != "z = 3", \
            f"typing and Tab (indent) should work as without the plugin: {lines}"
        messages = session.lua("vim.api.nvim_exec2('messages', {output = true}).output")
        assert sum("fim-lsp" in line for line in messages.splitlines()) == 1, messages
        assert session.lua("#vim.lsp.get_clients()") == 0
    if broken == "crashing":
        assert starts.read_text() == "x", "the plugin started the crashing server more than once"
