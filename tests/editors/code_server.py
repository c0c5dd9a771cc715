"""code-server (VS Code in the browser) with the fim-lsp .vsix installed, on 127.0.0.1."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import urllib.request
from pathlib import Path

from tests.editors.harness import EditorServer

DRIVER = Path(__file__).with_name("vscode_drive.js")

# Quiet, deterministic workbench: no welcome page, no trust prompt, no word suggestions popping
# up over the ghost text.
BASE_SETTINGS = {
    "workbench.startupEditor": "none",
    "workbench.tips.enabled": False,
    "security.workspace.trust.enabled": False,
    "telemetry.telemetryLevel": "off",
    "extensions.autoCheckUpdates": False,
    "extensions.autoUpdate": False,
    "update.mode": "none",
    "editor.inlineSuggest.enabled": True,
    "editor.quickSuggestions": {"other": "off", "comments": "off", "strings": "off"},
    "editor.suggestOnTriggerCharacters": False,
    "editor.wordBasedSuggestions": "off",
    "editor.autoClosingBrackets": "never",
    "editor.autoClosingQuotes": "never",
    "files.autoSave": "off",
    "chat.disableAIFeatures": True,
    "workbench.secondarySideBar.defaultVisibility": "hidden",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CodeServer(EditorServer):
    """A private code-server: its own user data and extensions dirs, the vsix installed."""

    def __init__(self, cache: Path, home: Path, workspace: Path, settings: dict):
        self.cache, self.workspace = cache, workspace
        node_bin = cache / "node24" / "home" / "bin"
        self.env = {**os.environ, "PATH": f"{node_bin}:{os.environ['PATH']}", "HOME": str(home)}
        self.exe = cache / "code-server" / "node_modules" / ".bin" / "code-server"
        self.data, self.extensions = home / "data", home / "extensions"
        (self.data / "User").mkdir(parents=True, exist_ok=True)
        (self.data / "User" / "settings.json").write_text(json.dumps({**BASE_SETTINGS, **settings}, indent=1))
        common = ["--user-data-dir", str(self.data), "--extensions-dir", str(self.extensions)]
        install = subprocess.run([str(self.exe), *common, "--install-extension",
                                  str(cache / "vscode" / "fim-lsp.vsix")],
                                 env=self.env, capture_output=True, text=True, timeout=180)
        assert install.returncode == 0, f"installing the vsix failed: {install.stdout}{install.stderr}"
        config = home / "config.yaml"
        config.write_text("auth: none\ncert: false\n")
        self.port = free_port()
        self.log = open(home / "code-server.log", "w")
        self.proc = subprocess.Popen(
            [str(self.exe), *common, "--config", str(config), "--bind-addr", f"127.0.0.1:{self.port}",
             "--auth", "none", "--disable-telemetry", "--disable-update-check", "--disable-workspace-trust",
             "--disable-getting-started-override", str(workspace)],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        self.wait_ready("code-server to listen", self._healthy)

    def _healthy(self) -> bool:
        assert self.proc.poll() is None, f"code-server exited: {Path(self.log.name).read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def drive(self, **config) -> dict:
        """Run vscode_drive.js against this server; its JSON result."""
        url = f"http://127.0.0.1:{self.port}/?folder={self.workspace}"
        env = {**self.env, "NODE_PATH": str(self.cache / "playwright" / "node_modules")}
        return self.run_driver(DRIVER, {"url": url, **config}, env)
