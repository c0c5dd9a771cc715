"""The runtimes a model can be served from, by name: one registry, each imported only when chosen.

`load` is the one entry point. `auto`, `torch` and `onnx` are local and go through
`engine.select.load_backend`, which picks the device and dtype and whether ONNX Runtime or torch
runs the checkpoint (ONNX Runtime that cannot serve falls back to torch). The others name a module
with its own `load_backend`: `openai` (a remote OpenAI-compatible server; a thin client that never
imports torch) and `reference` (transformers' `generate`, the baseline benchmarks compare with).
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from engine.api import Backend, BackendError

LOCAL = ("auto", "torch", "onnx")
# backend name -> module with `load_backend(model=, device=, dtype=, revision=, progress=, url=, remote=)`
RUNTIMES: dict[str, str] = {
    "openai": "engine.backends.openai_backend",
    "reference": "engine.backends.reference",
}


def load(backend: str = "auto", **options: Any) -> Backend:
    """Load a backend by name; `options` are `engine.select.load_backend`'s (local runtimes) or the
    runtime module's own. Raises BackendError for a name no runtime answers to."""
    if backend in LOCAL:
        from engine.select import load_backend

        local = {k: v for k, v in options.items() if k not in ("url", "remote")}
        return load_backend(backend=backend, **local)
    if backend not in RUNTIMES:
        raise BackendError(f"--backend {backend!r}: choose {', '.join((*LOCAL, *RUNTIMES))}")
    module_name = RUNTIMES[backend]
    if importlib.util.find_spec(module_name) is None:
        raise BackendError(f"the {backend} backend is not available in this build; use --backend torch")
    module = importlib.import_module(module_name)
    remote_options = {k: options[k] for k in ("model", "device", "dtype", "revision", "progress", "url", "remote")
                      if k in options}
    return module.load_backend(**remote_options)
