"""The prompt core is pure: importing it loads no model runtime and no LSP library."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

CORE = ["lsp_server.core.context", "lsp_server.core.prompt", "lsp_server.core.notebook", "lsp_server.core.neighbours",
        "lsp_server.core.postprocess", "lsp_server.core.languages"]
FORBIDDEN = ["torch", "pygls", "lsprotocol", "tokenizers", "transformers", "numpy"]


def loaded_after_import(modules: list[str], watch: list[str]) -> list[str]:
    """Which of `watch` a fresh interpreter has in sys.modules after importing `modules`."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in {watch!r} if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_core_modules_import_no_runtime_or_lsp_library():
    assert loaded_after_import(CORE, FORBIDDEN) == []


def test_the_probe_sees_what_a_module_imports():
    # lsp_server.core.context imports `re` and nothing imports `tomllib`: the probe must tell them apart
    assert loaded_after_import(["lsp_server.core.context"], ["re", "tomllib"]) == ["re"]
