"""Neovim in a real terminal (tmux), typed into with keystrokes and read back through its RPC socket."""
from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

from tests.editors.harness import REPO, wait_for

PLUGIN = REPO / "editor-clients" / "neovim"

INIT_LUA = """\
vim.g.loaded_python3_provider = 0  -- probing for pynvim takes seconds
vim.opt.rtp:prepend({plugin})
require("fim_lsp").setup(vim.json.decode({config}))
"""


class NvimSession:
    """`nvim` on `file` inside a private tmux server; `setup` is the table given to fim_lsp.setup."""

    def __init__(self, nvim: Path, workdir: Path, file: Path, setup: dict, width: int = 110, height: int = 24):
        self.nvim, self.workdir = nvim, workdir
        self.tmux = ["tmux", "-L", f"fim-{uuid.uuid4().hex[:8]}"]
        self.socket = workdir / f"nvim-{uuid.uuid4().hex[:8]}.sock"
        init = workdir / "init.lua"
        init.write_text(INIT_LUA.format(plugin=json.dumps(str(PLUGIN)), config=json.dumps(json.dumps(setup))))
        env = {"XDG_STATE_HOME": str(workdir / "state"), "XDG_DATA_HOME": str(workdir / "data"),
               "XDG_CONFIG_HOME": str(workdir / "config")}
        command = " ".join([*(f"{k}={v}" for k, v in env.items()), str(nvim), "--clean", "-n",
                            "-u", str(init), "--listen", str(self.socket), str(file)])
        subprocess.run([*self.tmux, "new-session", "-d", "-x", str(width), "-y", str(height),
                        "-c", str(workdir), command], check=True)
        self.log_path = workdir / "state" / "nvim" / "lsp.log"
        try:
            wait_for("Neovim to draw the file", lambda: self.socket.exists() and self.screen().strip(), 30)
        except AssertionError:
            self.close()
            raise

    def keys(self, *keys: str) -> None:
        """tmux key names (`Escape`, `Tab`, `G`...), each sent as one keystroke."""
        subprocess.run([*self.tmux, "send-keys", *keys], check=True)

    def type(self, text: str) -> None:
        """Literal text in one burst, as a fast typist's keys arrive (Neovim sees one change)."""
        subprocess.run([*self.tmux, "send-keys", "-l", text], check=True)

    def screen(self) -> str:
        proc = subprocess.run([*self.tmux, "capture-pane", "-p"], capture_output=True, text=True)
        return proc.stdout

    def lua(self, expr: str):
        """Evaluate a Lua expression in the editor; its value comes back through JSON."""
        lua = f"vim.json.encode({{v = ({expr})}})".replace("\\", "\\\\").replace('"', '\\"')
        wrapped = f'luaeval("{lua}")'  # a Vimscript string: backslashes and quotes escaped
        proc = subprocess.run([str(self.nvim), "--clean", "--headless", "--server", str(self.socket),
                               "--remote-expr", wrapped], capture_output=True, text=True, timeout=20,
                              env={**os.environ, "XDG_STATE_HOME": str(self.workdir / "state")})
        assert proc.returncode == 0 and proc.stdout, f"remote-expr failed: {proc.stderr or proc.stdout}"
        value = json.loads(proc.stdout)
        return value.get("v") if isinstance(value, dict) else None  # {v = nil} encodes as []

    def close(self) -> None:
        subprocess.run([*self.tmux, "kill-server"], capture_output=True)

    def __enter__(self) -> "NvimSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
