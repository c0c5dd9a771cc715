"""The jupyter-server side: one `fim-lsp serve` per Jupyter server, reached over stdio.

A notebook is sent as an LSP notebook document (`notebookDocument/didOpen`, then `didChange` with
the cells whose text changed, or a splice when cells were added, deleted or moved; see
`notebook.py`); a file editor's text is a plain text document. Each request then asks
`textDocument/inlineCompletion` at the cursor in the active cell. A server that cannot start or
dies is reported to the browser with the reason and not started again until
`POST /fim-lsp/restart`: no retry storm.
"""
from __future__ import annotations

import asyncio
import json
import shutil
from collections import deque
from pathlib import Path
from typing import Any

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web
from traitlets import Dict, Float, List, Unicode
from traitlets.config import Configurable

from fim_lsp_jupyterlab.lsp import LspProcess, ServerGone
from fim_lsp_jupyterlab.notebook import Cell, FileSync, NotebookSync, cell_position, document_cells


class FimLsp(Configurable):
    """Settings of the fim-lsp proxy (`c.FimLsp.command = [...]` in jupyter_server_config.py)."""

    command = List(Unicode(), default_value=["fim-lsp", "serve"], config=True,
                   help="Command that starts the language server over stdio.")
    settings = Dict(default_value={}, config=True,
                    help="Server settings sent as initializationOptions (model, backend, device, "
                         "maxNewTokens, temperature, multiline, ...).")
    request_timeout = Float(60.0, config=True, help="Seconds to wait for one completion.")
    log_file = Unicode("", config=True, help="Where the server's stderr goes (default: under the runtime dir).")


class Proxy:
    """The running server (started on first use), its open documents, and the last request made."""

    def __init__(self, config: FimLsp, log_path: Path, root_dir: str):
        self.config, self.log_path, self.root_dir = config, log_path, root_dir
        self.server: LspProcess | None = None
        self.failure: str | None = None
        self.files = FileSync()  # what the server has of each file editor's text
        self.notebooks = NotebookSync()  # what the server has of each notebook
        self.recent: deque[dict[str, Any]] = deque(maxlen=16)  # the latest requests and answers, for status
        self._lock = asyncio.Lock()

    async def _ensure_server(self) -> LspProcess:
        if self.failure:
            raise ServerGone(self.failure)
        if self.server is not None and self.server.alive:
            return self.server
        if self.server is not None:  # it was running and died
            self.failure = f"the fim-lsp server exited (code {self.server.proc.returncode}); " \
                           f"see {self.log_path}: {self.server.stderr_tail(300)}"
            raise ServerGone(self.failure)
        command = list(self.config.command)
        if not command or shutil.which(command[0]) is None:
            self.failure = f"server command {command[:1]} not found; set c.FimLsp.command in jupyter_server_config"
            raise ServerGone(self.failure)
        self.server = await LspProcess.start(command, self.log_path, cwd=self.root_dir)
        try:
            await self.server.request("initialize", {
                "processId": None, "rootUri": Path(self.root_dir).resolve().as_uri(), "capabilities": {},
                "initializationOptions": dict(self.config.settings),
                "clientInfo": {"name": "fim-lsp-jupyterlab"},
            }, self.config.request_timeout)
            self.server.notify("initialized", {})
        except (ServerGone, asyncio.TimeoutError, RuntimeError) as exc:
            self.failure = f"the fim-lsp server failed to start: {exc}; see {self.log_path}"
            raise ServerGone(self.failure) from None
        return self.server

    async def complete(self, path: str, cells: list[Cell], active: int, offset: int,
                       invoked: bool = False, language: str = "python") -> list[dict]:
        """The server's inline completion items for the cursor at `offset` of cell `active` of the
        notebook (or file, one cell) at `path`; asked by hand (`invoked`), they include alternatives.
        Only code cells are completed: other cells get no items."""
        document_cells(cells, active)  # a bad `active` raises ValueError here
        if cells[active].kind != "code":
            return []
        async with self._lock:  # document updates and the request that follows stay in order
            server, target, sent, index, line, character, language = await self._sync(
                path, cells, active, offset, language)
            record = {"uri": target, "language": language, "cells": [c.source for c in sent], "cell": index,
                      "line": line, "character": character, "items": None}
            self.recent.append(record)
            request = server.request("textDocument/inlineCompletion", {
                "textDocument": {"uri": target}, "position": {"line": line, "character": character},
                "context": {"triggerKind": 1 if invoked else 2}}, self.config.request_timeout)  # Invoked, Automatic
        try:
            result = await request
        except ServerGone:
            return await self._died()
        items = result.get("items", []) if isinstance(result, dict) else (result or [])
        record["items"] = [{"insertText": (i["insertText"] if isinstance(i["insertText"], str)
                                           else i["insertText"]["value"]),
                            "range": i.get("range"), "command": i.get("command")} for i in items]
        return record["items"]

    async def cursor(self, path: str, cells: list[Cell], active: int, offset: int, language: str = "python") -> bool:
        """Tell the server where the cursor rests (`fim-lsp/cursor`, a hint: it prefills the prompt
        there while idle); the documents are synced first. False for a cell that is not code."""
        document_cells(cells, active)  # a bad `active` raises ValueError here
        if cells[active].kind != "code":
            return False
        async with self._lock:
            server, target, _, _, line, character, _ = await self._sync(path, cells, active, offset, language)
            server.notify("fim-lsp/cursor", {"textDocument": {"uri": target},
                                             "position": {"line": line, "character": character}})
        return True

    async def _sync(self, path: str, cells: list[Cell], active: int, offset: int, language: str):
        """Bring the server's copy of the notebook (or file) up to date; the server, the document to
        ask about, the cells sent, the active one's index among them, the cursor there and the language."""
        sent, index = document_cells(cells, active)
        line, character = cell_position(cells[active].source, offset)
        notebook = path.endswith(".ipynb")
        if not notebook and len(sent) != 1:
            raise ValueError(f"{path} is not a notebook (.ipynb), so it has one cell, not {len(sent)}")
        uri = (Path(self.root_dir) / path).resolve().as_uri()
        language = language.lower()  # kernels say "Python", "R"; LSP language ids are lower case
        server = await self._ensure_server()
        if notebook:
            messages, cell_uris = self.notebooks.sync(uri, sent, language)
            for method, params in messages:
                server.notify(method, params)
            target = cell_uris[index]
        else:
            for method, params in self.files.sync(uri, sent[0].source, language):
                server.notify(method, params)
            target = uri
        return server, target, sent, index, line, character, language

    async def _died(self) -> list[dict]:
        await self._ensure_server()  # raises ServerGone with the exit code and stderr
        return []

    async def status(self) -> dict:
        if self.failure:
            return {"state": "failed", "error": self.failure}
        if self.server is None:
            return {"state": "not started"}
        server = await self._ensure_server()
        return await server.request("fim-lsp/status", {}, 10)

    async def restart(self) -> None:
        if self.server is not None:
            await self.server.close()
        self.server, self.failure, self.files, self.notebooks = None, None, FileSync(), NotebookSync()

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()


class ProxyHandler(APIHandler):
    @property
    def proxy(self) -> Proxy:
        return self.settings["fim_lsp_proxy"]

    def fail(self, status: int, message: str) -> None:
        self.set_status(status)
        self.finish(json.dumps({"message": message}))

    def where(self, body: dict) -> tuple[str, list[Cell], int, int, str]:
        """(path, cells, active cell, offset in it, language) of a request body; KeyError,
        TypeError or ValueError when a field is missing or of the wrong type."""
        cells = [Cell(kind=c["kind"], source=c["source"]) for c in body["cells"]]
        path, active, offset = str(body["path"]), int(body["active"]), int(body["offset"])
        language = body.get("language") or "python"
        if not isinstance(language, str):
            raise TypeError(f"language must be a language id such as 'python', got {language!r}")
        return path, cells, active, offset, language


class InlineHandler(ProxyHandler):
    @web.authenticated
    async def post(self) -> None:
        body = self.get_json_body() or {}
        try:
            path, cells, active, offset, language = self.where(body)
            invoked = body.get("invoked", False)
            if not isinstance(invoked, bool):
                raise TypeError(f"invoked must be true or false, got {invoked!r}")
            items = await self.proxy.complete(path, cells, active, offset, invoked, language)
        except (KeyError, TypeError, ValueError) as exc:
            return self.fail(400, f"bad request: {exc!r}; expected path, cells[{{kind, source}}], active, offset"
                                  f" and optionally invoked, language")
        except ServerGone as exc:
            return self.fail(503, str(exc))
        except asyncio.TimeoutError:
            return self.fail(504, "the fim-lsp server did not answer in time")
        self.finish(json.dumps({"items": items}))


class CursorHandler(ProxyHandler):
    @web.authenticated
    async def post(self) -> None:
        body = self.get_json_body() or {}
        try:
            path, cells, active, offset, language = self.where(body)
            sent = await self.proxy.cursor(path, cells, active, offset, language)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            return self.fail(400, f"bad request: {exc!r}; expected path, cells[{{kind, source}}], active, offset"
                                  f" and optionally language")
        except ServerGone as exc:
            return self.fail(503, str(exc))
        self.finish(json.dumps({"sent": sent}))


class StatusHandler(ProxyHandler):
    @web.authenticated
    async def get(self) -> None:
        try:
            status = await self.proxy.status()
        except (ServerGone, asyncio.TimeoutError) as exc:
            status = {"state": "failed", "error": str(exc)}
        self.finish(json.dumps({**status, "recent_requests": list(self.proxy.recent)}))


class RestartHandler(ProxyHandler):
    @web.authenticated
    async def post(self) -> None:
        await self.proxy.restart()
        self.finish("{}")


def load(serverapp) -> None:
    config = FimLsp(parent=serverapp)
    log_path = Path(config.log_file or Path(serverapp.runtime_dir) / "fim-lsp-server.log")
    proxy = Proxy(config, log_path, serverapp.root_dir)
    serverapp.web_app.settings["fim_lsp_proxy"] = proxy
    base = url_path_join(serverapp.web_app.settings["base_url"], "fim-lsp")
    serverapp.web_app.add_handlers(".*$", [
        (url_path_join(base, "inline"), InlineHandler),
        (url_path_join(base, "cursor"), CursorHandler),
        (url_path_join(base, "status"), StatusHandler),
        (url_path_join(base, "restart"), RestartHandler),
    ])
    serverapp.log.info("fim-lsp: proxy ready (server command %s, stderr in %s)", config.command, log_path)
