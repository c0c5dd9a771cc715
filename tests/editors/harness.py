"""What the editor tests share: installing the editors, the server command, screenshots, waiting."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import json
import tempfile
import time
from pathlib import Path
from typing import IO, Callable, TypeVar

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "editor-clients" / "setup.sh"
T = TypeVar("T")


def setup_editors(*parts: str) -> Path:
    """Run editor-clients/setup.sh for these parts (quick when already installed); the cache dir."""
    proc = subprocess.run(["bash", str(SETUP), *parts], capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, f"setup.sh {' '.join(parts)} failed:\n{proc.stderr[-4000:]}"
    return Path(proc.stdout.strip().splitlines()[-1])


def artifacts_dir(name: str) -> Path:
    """Where a test leaves its screenshots: $FIM_LSP_ARTIFACTS/NAME, else a temp dir kept after the run."""
    root = Path(os.environ.get("FIM_LSP_ARTIFACTS") or Path(tempfile.gettempdir()) / "fim-lsp-artifacts")
    out = root / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    return out


def serve_command(model: Path) -> list[str]:
    """`fim-lsp serve` from this test's environment, on a model directory."""
    exe = Path(sys.executable).parent / "fim-lsp"
    head = [str(exe)] if exe.exists() else [sys.executable, "-m", "fim_lsp.cli"]
    return [*head, "serve", "--model", str(model)]


# Small and single-line: random-weight models produce noise, and a short line keeps it readable.
# float32: there the cached engine's tokens equal a recompute's exactly, so what the editor shows
# after any order of requests is what a fresh server answers for the final buffer.
# repoName off: the reference server these tests ask (tests/editors/lsp_probe.py) opens the file
# with no workspace folder, so it has no <reponame> to head the prompt with (tests/test_repo_name.py
# covers that header).
SERVER_SETTINGS = {"maxNewTokens": 6, "multiline": "never", "temperature": 0, "dtype": "float32", "repoName": False}


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float = 90, every_s: float = 0.2) -> T:
    """Poll `probe` until it returns something truthy; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what} (last: {last!r})")


def printable_run(text: str, limit: int = 16) -> str:
    """The longest run of plain printable ASCII in `text` (what a screen shows verbatim), cut to `limit`."""
    best, run = "", ""
    for ch in text:
        if " " <= ch <= "~":
            run += ch
            best = max(best, run.strip(), key=len)
        else:
            run = ""
    return best[:limit]


class EditorServer:
    """An editor's web server started by a test (`proc`, logging to `log`); stopped on exit."""

    proc: subprocess.Popen
    log: IO[str]

    def wait_ready(self, what: str, probe: Callable[[], object], timeout_s: float = 120) -> None:
        """Wait for the server to come up; stop it (no stray process) when it never does."""
        try:
            wait_for(what, probe, timeout_s=timeout_s, every_s=0.5)
        except AssertionError:
            self.close()
            raise

    def run_driver(self, script: Path, config: dict, env: dict) -> dict:
        """Run a playwright driver script with `config`; the JSON object it printed."""
        proc = subprocess.run(["node", str(script), json.dumps(config)], env=env,
                              capture_output=True, text=True, timeout=400)
        assert proc.stdout.strip(), f"{script.name} printed nothing: {proc.stderr[-3000:]}"
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
