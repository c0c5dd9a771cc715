"""The model's life cycle in the server: load on a background thread with `$/progress`, swap in.

A load never blocks the LSP event loop; until a model is ready a completion request gets an empty
answer. A newer configuration that starts loading while an older load runs wins: the older one's
result is discarded. A model that fails to load leaves the previous one serving.
"""
from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import threading
import traceback
from collections.abc import Callable
from typing import Literal, Protocol

from lsprotocol import types
from pygls.progress import Progress as WorkDoneProgress

from engine.api import Backend
from lsp_server import pipeline
from lsp_server.config import ModelConfig

log = logging.getLogger("fim-lsp")

ModelState = Literal["not started", "loading", "ready", "failed"]


class Session(Protocol):
    """What a load needs of the server: progress, messages, and setting the model back on failure."""

    client_capabilities: types.ClientCapabilities
    work_done_progress: WorkDoneProgress

    def log(self, kind: types.MessageType, message: str) -> None: ...
    def show(self, kind: types.MessageType, message: str) -> None: ...
    def keep_model(self, model: ModelConfig) -> None: ...


class ModelHost:
    """The loaded backend, the configuration it came from, and the state of the latest load."""

    def __init__(self, on_swap: Callable[[], None]) -> None:
        self.backend: Backend | None = None
        self.loaded: ModelConfig | None = None  # the configuration `backend` was loaded from
        self.state: ModelState = "not started"
        self.error = ""  # why the latest load failed; "" when it did not
        self.loads = 0  # load attempts started; a finished load older than the newest is discarded
        self._on_swap = on_swap  # what was computed with the old model is stale once a new one serves

    async def start_loading(self, ls: Session, model: ModelConfig) -> None:
        """Load `model` on a background thread, reporting $/progress; swap it in when it is ready."""
        self.loads += 1
        attempt, token = self.loads, f"fim-lsp/load/{self.loads}"
        self.state = "loading"
        progress = await create_progress(ls, token)
        name = model.model or "the default model"
        if progress:
            ls.work_done_progress.begin(token, types.WorkDoneProgressBegin(
                title="fim-lsp: loading model", message=name, percentage=0, cancellable=False))
        loop = asyncio.get_running_loop()
        shown = [0]  # percent reported so far: LSP progress only moves forward

        def report(message: str, fraction: float) -> None:
            if progress and attempt == self.loads:
                shown[0] = max(shown[0], min(100, int(fraction * 100)))
                ls.work_done_progress.report(token, types.WorkDoneProgressReport(message=message, percentage=shown[0]))

        def finish(backend: Backend | None, error: Exception | None) -> None:
            if progress:
                done = "ready" if backend is not None else "failed"
                ls.work_done_progress.end(token, types.WorkDoneProgressEnd(message=f"{name}: {done}"))
            if attempt != self.loads:
                return  # a newer configuration is loading
            if backend is not None:
                self.backend, self.loaded, self.state = backend, model, "ready"
                self._on_swap()
                release_freed_memory()  # the replaced model's weights and caches
                info = backend.info
                ls.log(types.MessageType.Info,
                       f"fim-lsp: {info.model} ready on {info.backend} {info.device} {info.dtype} ({info.why})")
                if not backend.fim.has_fim:
                    ls.show(types.MessageType.Warning,
                            f"fim-lsp: {info.model} has no fill-in-the-middle tokens; completing left to right")
                return
            self.error = f"{type(error).__name__}: {error}"
            kept = (f"; keeping {self.loaded.model or 'the default model'}"
                    if self.backend is not None and self.loaded else "")
            if self.loaded is not None:
                ls.keep_model(self.loaded)
            self.state = "ready" if self.backend is not None else "failed"
            ls.show(types.MessageType.Error, f"fim-lsp: could not load {name}: {error}{kept}")

        def work() -> None:
            try:
                backend = pipeline.load_model(model, lambda m, f: loop.call_soon_threadsafe(report, m, f))
            except Exception as exc:  # any loader failure is reported to the user, not raised
                log.debug("model load failed\n%s", traceback.format_exc())
                loop.call_soon_threadsafe(finish, None, exc)
            else:
                loop.call_soon_threadsafe(finish, backend, None)

        threading.Thread(target=work, name=f"fim-load-{attempt}", daemon=True).start()


def release_freed_memory() -> None:
    """Collect what a replaced model left and hand glibc's free pages back to the system.

    Without the trim, a server that swapped models keeps the old model's freed arenas in its RSS.
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): the allocator keeps its own policy
        pass


async def create_progress(ls: Session, token: str) -> bool:
    """Ask the client for a progress token; False when it does not support server progress."""
    window = ls.client_capabilities.window
    if window is None or not window.work_done_progress:
        return False
    try:
        await asyncio.wait_for(ls.work_done_progress.create_async(token), timeout=5)
    except Exception as exc:  # a client that refuses progress still gets its completions
        ls.log(types.MessageType.Warning, f"fim-lsp: no progress reporting: {exc}")
        return False
    return True
