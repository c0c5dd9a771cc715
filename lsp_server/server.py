"""The language server: thin LSP handlers over the document store, the scheduler and the pipeline.

A handler fetches the document (never from disk), asks the scheduler to run the pipeline on the
engine thread, and returns an `lsprotocol` type. The model loads on a background thread after
`initialized`, reporting `$/progress`; until it is ready a completion request gets an empty
result. Anything a client sends that we cannot use gets an LSP error or an empty result, and the
server carries on.
"""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import ipaddress
import logging
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass, replace
from typing import Any, Literal

import cattrs
from lsprotocol import types
from pygls.exceptions import (
    JsonRpcException,
    JsonRpcInternalError,
    JsonRpcInvalidParams,
    JsonRpcInvalidRequest,
    JsonRpcServerNotInitialized,
)
from pygls.io_ import run_async
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol

from engine.api import Backend, BackendError
from lsp_server import pipeline
from lsp_server.config import ConfigError, ModelConfig, ServerConfig, apply_settings, config_from_args
from lsp_server.context import Encoding, offset_to_position, position_to_offset
from lsp_server.documents import DocumentStore, Edit, excluded, uri_to_path
from lsp_server.notebook import Cell, map_cell_position, notebook_text
from lsp_server.postprocess import ShownSuggestion
from lsp_server.scheduler import LatencyWindow, Scheduler, Superseded

log = logging.getLogger("fim-lsp")

STATUS = "fim-lsp/status"
ACCEPTED = "fim-lsp.accepted"
SUGGESTION_DETAIL = "fim-lsp · AI suggestion"
NOTEBOOK_SYNC = types.NotebookDocumentSyncOptions(
    notebook_selector=[types.NotebookDocumentFilterWithNotebook(notebook="*")]
)
ModelState = Literal["not started", "loading", "ready", "failed"]


class FimProtocol(LanguageServerProtocol):
    """pygls' protocol, answering requests whose params do not parse instead of dropping them."""

    def structure_message(self, data: dict[str, Any]):
        try:
            return super().structure_message(data)
        except JsonRpcException as exc:
            if isinstance(data, dict) and "id" in data and "method" in data:
                cause = exc.__cause__
                detail = "; ".join(cattrs.transform_error(cause)) if isinstance(cause, cattrs.ClassValidationError) else str(cause)
                error = JsonRpcInvalidParams(f"invalid params for {data['method']}: {detail}")
                self._send_response(data["id"], error=error.to_response_error())
                return ANSWERED
            raise

    def handle_message(self, message):
        if message is not ANSWERED:
            super().handle_message(message)


ANSWERED = object()  # a request already answered with an error while it was parsed


@dataclass(slots=True)
class Acceptance:
    """How many suggestions were shown and accepted (kept in this process only)."""

    shown: int = 0
    accepted: int = 0
    accepted_chars: int = 0


class FimServer(LanguageServer):
    """The server and its state: configuration, documents, the loaded backend, statistics."""

    def __init__(self) -> None:
        super().__init__(
            "fim-lsp", "0.1.0", text_document_sync_kind=types.TextDocumentSyncKind.Incremental,
            notebook_document_sync=NOTEBOOK_SYNC, protocol_cls=FimProtocol,
        )
        # Our own document store replaces pygls' (see documents.py); its handlers are below.
        for method in (types.TEXT_DOCUMENT_DID_OPEN, types.TEXT_DOCUMENT_DID_CHANGE, types.TEXT_DOCUMENT_DID_CLOSE,
                       types.NOTEBOOK_DOCUMENT_DID_OPEN, types.NOTEBOOK_DOCUMENT_DID_CHANGE,
                       types.NOTEBOOK_DOCUMENT_DID_CLOSE):
            self.protocol.fm.builtin_features.pop(method, None)
        self.config = ServerConfig()
        self.store = DocumentStore()
        self.scheduler = Scheduler()
        self.latency = LatencyWindow(100)
        self.acceptance = Acceptance()
        self.backend: Backend | None = None
        self.loaded: ModelConfig | None = None  # the configuration `backend` was loaded from
        self.model_state: ModelState = "not started"
        self.model_error = ""
        self.backend_error = ""  # the last request's BackendError while they keep failing; "" once one works
        self.loads = 0  # load attempts started; a finished load older than the newest is discarded
        self.initialized = False  # `initialized` arrived
        self.required_token: str | None = None  # TCP shared secret
        self.authorized = True
        self.shown: dict[str, ShownSuggestion] = {}
        self.snippets: dict[str, tuple] = {}
        self.suggestions = 0
        self.last: dict[str, Any] = {}  # the latest completion's token figures

    def start_tcp(self, host: str, port: int) -> None:
        """Serve one LSP session over TCP, then exit.

        pygls' own start_tcp hands every new connection the live session (the next answers go to
        the newcomer, who needs no token), so any connection after the first is closed at once.
        """
        self._stop_event = stop_event = threading.Event()
        taken = False

        async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal taken
            if taken:
                writer.close()
                return
            taken = True
            self.protocol.set_writer(writer)
            await run_async(stop_event=stop_event, reader=reader, protocol=self.protocol, logger=log,
                            error_handler=self.report_server_error)
            self.shutdown()

        async def serve() -> None:
            self._server = await asyncio.start_server(session, host, port)
            async with self._server:
                await self._server.serve_forever()

        try:
            asyncio.run(serve())
        except asyncio.CancelledError:
            pass

    def report_server_error(self, error: Exception, source) -> None:
        """Log out-of-band errors (a notification that failed) rather than pop them up."""
        log.error("%s", error)
        self.log(types.MessageType.Error, f"{type(error).__name__}: {error}")

    def log(self, kind: types.MessageType, message: str) -> None:
        """window/logMessage (also on stderr)."""
        log.info("%s", message)
        try:
            self.window_log_message(types.LogMessageParams(type=kind, message=message))
        except Exception:  # no transport yet
            pass

    def show(self, kind: types.MessageType, message: str) -> None:
        """window/showMessage, for what the user must see (a model that failed to load)."""
        self.log(kind, message)
        self.window_show_message(types.ShowMessageParams(type=kind, message=message))

    @property
    def encoding(self) -> Encoding:
        """The negotiated position encoding."""
        value = self.protocol.workspace.position_encoding
        return str(getattr(value, "value", value) or "utf-16")  # type: ignore[return-value]

    @property
    def roots(self) -> list[str]:
        """The workspace folders' URIs (the root URI when the client named no folders): prompt paths
        are relative to them."""
        workspace = self.protocol._workspace
        if workspace is None:
            return []
        folders = [f.uri for f in workspace.folders.values()]
        return folders or ([workspace.root_uri] if workspace.root_uri else [])

    def check_request(self) -> None:
        """Raise the LSP error for a request the session cannot take yet."""
        if self.protocol._workspace is None:
            raise JsonRpcServerNotInitialized("the server is not initialized: send `initialize` first")
        if not self.authorized:
            raise JsonRpcInvalidRequest("this session did not present the server's token")


server = FimServer()


# --------------------------------------------------------------------------------------------
# Life cycle and configuration


@server.feature(types.INITIALIZE)
def initialize(ls: FimServer, params: types.InitializeParams) -> None:
    options = params.initialization_options
    if ls.required_token is not None:
        given = options.get("token") if isinstance(options, dict) else None
        if given != ls.required_token:
            ls.authorized = False
            raise JsonRpcInvalidRequest("this server needs initializationOptions.token (its --token)")
    try:
        ls.config = apply_settings(ls.config, options)
    except ConfigError as exc:
        ls.log(types.MessageType.Error, f"fim-lsp: initializationOptions ignored: {exc}")
    ls.scheduler.debounce_s = ls.config.debounce_ms / 1000


@server.feature(types.INITIALIZED)
async def initialized(ls: FimServer, params: types.InitializedParams) -> None:
    if not ls.authorized:
        return
    ls.initialized = True
    await start_loading(ls, ls.config.model)


@server.feature(types.SHUTDOWN)
def shutdown(ls: FimServer, params: None) -> None:
    ls.scheduler.shutdown()


@server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
async def workspace_did_change_configuration(ls: FimServer, params: types.DidChangeConfigurationParams) -> None:
    if not ls.authorized:
        return
    try:
        new = apply_settings(ls.config, params.settings)
    except ConfigError as exc:
        ls.show(types.MessageType.Error, f"fim-lsp: settings not applied: {exc}")
        return
    old, ls.config = ls.config, new
    ls.scheduler.debounce_s = new.debounce_ms / 1000
    if (new.completion, new.exclude) != (old.completion, old.exclude):
        # the suggestions shown and the snippets quoted were made under the old settings (with a
        # document now excluded, say): the next request asks the model again
        ls.shown.clear()
        ls.snippets.clear()
    if new.model != old.model and ls.initialized:
        await start_loading(ls, new.model)


async def start_loading(ls: FimServer, model: ModelConfig) -> None:
    """Load `model` on a background thread, reporting $/progress; swap it in when it is ready."""
    ls.loads += 1
    attempt, token = ls.loads, f"fim-lsp/load/{ls.loads}"
    ls.model_state = "loading"
    progress = await create_progress(ls, token)
    name = model.model or "the default model"
    if progress:
        ls.work_done_progress.begin(token, types.WorkDoneProgressBegin(
            title="fim-lsp: loading model", message=name, percentage=0, cancellable=False))
    loop = asyncio.get_running_loop()

    shown = [0]  # percent reported so far: LSP progress only moves forward

    def report(message: str, fraction: float) -> None:
        if progress and attempt == ls.loads:
            shown[0] = max(shown[0], min(100, int(fraction * 100)))
            ls.work_done_progress.report(token, types.WorkDoneProgressReport(message=message, percentage=shown[0]))

    def finish(backend: Backend | None, error: Exception | None) -> None:
        if progress:
            done = "ready" if backend is not None else "failed"
            ls.work_done_progress.end(token, types.WorkDoneProgressEnd(message=f"{name}: {done}"))
        if attempt != ls.loads:
            return  # a newer configuration is loading
        if backend is not None:
            ls.backend, ls.loaded, ls.model_state = backend, model, "ready"
            ls.shown.clear()
            ls.snippets.clear()
            release_freed_memory()  # the replaced model's weights and caches
            info = backend.info
            ls.log(types.MessageType.Info,
                   f"fim-lsp: {info.model} ready on {info.backend} {info.device} {info.dtype} ({info.why})")
            if not backend.fim.has_fim:
                ls.show(types.MessageType.Warning,
                        f"fim-lsp: {info.model} has no fill-in-the-middle tokens; completing left to right")
            return
        ls.model_error = f"{type(error).__name__}: {error}"
        kept = f"; keeping {ls.loaded.model or 'the default model'}" if ls.backend is not None and ls.loaded else ""
        if ls.loaded is not None:
            ls.config = replace(ls.config, model=ls.loaded)
        ls.model_state = "ready" if ls.backend is not None else "failed"
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


async def create_progress(ls: FimServer, token: str) -> bool:
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


# --------------------------------------------------------------------------------------------
# Documents and notebooks


@server.feature(types.TEXT_DOCUMENT_DID_OPEN)
def text_document_did_open(ls: FimServer, params: types.DidOpenTextDocumentParams) -> None:
    doc = params.text_document
    ls.store.open(doc.uri, doc.text, doc.version, doc.language_id)


@server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
def text_document_did_change(ls: FimServer, params: types.DidChangeTextDocumentParams) -> None:
    uri = params.text_document.uri
    if ls.store.get(uri) is None:
        ls.log(types.MessageType.Warning, f"fim-lsp: didChange for a document that is not open: {uri}")
        return
    ls.store.change(uri, params.text_document.version, [to_edit(c) for c in params.content_changes], ls.encoding)


@server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
def text_document_did_close(ls: FimServer, params: types.DidCloseTextDocumentParams) -> None:
    forget(ls, params.text_document.uri)
    ls.store.close(params.text_document.uri)


@server.feature(types.NOTEBOOK_DOCUMENT_DID_OPEN)
def notebook_document_did_open(ls: FimServer, params: types.DidOpenNotebookDocumentParams) -> None:
    nb = params.notebook_document
    cells = [(c.document, cell_kind(c.kind)) for c in nb.cells]
    ls.store.open_notebook(nb.uri, cells, [])
    for doc in params.cell_text_documents:
        ls.store.open(doc.uri, doc.text, doc.version, doc.language_id, notebook_uri=nb.uri)


@server.feature(types.NOTEBOOK_DOCUMENT_DID_CHANGE)
def notebook_document_did_change(ls: FimServer, params: types.DidChangeNotebookDocumentParams) -> None:
    uri = params.notebook_document.uri
    if uri not in ls.store.notebooks:
        ls.log(types.MessageType.Warning, f"fim-lsp: change for a notebook that is not open: {uri}")
        return
    cells = params.change.cells
    if cells is None:
        return
    if cells.structure is not None:
        array = cells.structure.array
        new = [(c.document, cell_kind(c.kind)) for c in array.cells or []]
        ls.store.splice_cells(uri, array.start, array.delete_count, new)
        for doc in cells.structure.did_open or []:
            ls.store.open(doc.uri, doc.text, doc.version, doc.language_id, notebook_uri=uri)
        for doc in cells.structure.did_close or []:
            ls.store.close(doc.uri)
    for cell in cells.data or []:
        ls.store.set_cell_kind(uri, cell.document, cell_kind(cell.kind))
    for content in cells.text_content or []:
        if ls.store.get(content.document.uri) is not None:
            ls.store.change(content.document.uri, content.document.version,
                            [to_edit(c) for c in content.changes], ls.encoding)
    ls.shown.pop(uri, None)


@server.feature(types.NOTEBOOK_DOCUMENT_DID_CLOSE)
def notebook_document_did_close(ls: FimServer, params: types.DidCloseNotebookDocumentParams) -> None:
    forget(ls, params.notebook_document.uri)
    ls.store.close_notebook(params.notebook_document.uri)


def to_edit(change: types.TextDocumentContentChangeEvent) -> Edit:
    """An lsprotocol content change as a store edit."""
    if isinstance(change, types.TextDocumentContentChangePartial):
        r = change.range
        return Edit(change.text, (r.start.line, r.start.character, r.end.line, r.end.character))
    return Edit(change.text)


def cell_kind(kind: types.NotebookCellKind) -> str:
    return "markdown" if kind == types.NotebookCellKind.Markup else "code"


def forget(ls: FimServer, doc_key: str) -> None:
    """A document closed: cancel its request and drop its cache slot (on the engine thread)."""
    ls.scheduler.cancel(doc_key)
    ls.shown.pop(doc_key, None)
    ls.snippets.pop(doc_key, None)
    backend = ls.backend
    if backend is not None:
        asyncio.ensure_future(ls.scheduler.call(lambda: backend.drop(doc_key)))


# --------------------------------------------------------------------------------------------
# Completions


@dataclass(slots=True)
class Placed:
    """A suggestion and where it lands in the client's document."""

    text: str
    range: types.Range
    command: types.Command


async def suggest(ls: FimServer, uri: str, position: types.Position, resample: bool = False,
                  invoked: bool = False, alternatives: int = 1) -> list[Placed]:
    """Run the pipeline for a request at `position` in `uri`: the suggestions to show, best first
    (none when there is nothing to show).

    `resample`: ask the model again even where the suggestion shown still fits (a user who invokes
    a suggestion by hand while sampling wants another sample, not the same one). `invoked`: the
    user asked by hand, so a suggestion is shown however unsure the model was (minTokenProbability
    applies to automatic requests). `alternatives` > 1 adds the other lines the pipeline compared
    (likeliest first), then greedy suggestions from the next first-token ranks (greedy decoding
    only), each text once."""
    ls.check_request()
    doc = ls.store.get(uri)
    if doc is None:
        raise JsonRpcInvalidParams(f"the document {uri} is not open (send textDocument/didOpen first)")
    backend = ls.backend
    if backend is None:
        return []  # still loading (or failed): an empty answer, never a wait
    start = time.perf_counter()
    encoding = ls.encoding
    doc_text = pipeline.scrub_surrogates(doc.text)
    try:
        cursor = position_to_offset(doc_text, position.line, position.character, encoding)
    except ValueError as exc:
        raise JsonRpcInvalidParams(f"bad position {position.line}:{position.character}: {exc}") from None
    doc_key, text, line, character, path = uri, doc_text, position.line, position.character, uri_to_path(uri, ls.roots)
    if doc.notebook_uri is not None:
        doc_key, text, (line, character) = doc.notebook_uri, *notebook_view(ls, doc.notebook_uri, uri, position, encoding)
        path = uri_to_path(doc.notebook_uri, ls.roots)
    if excluded(path, ls.config.exclude):
        return []  # the user keeps this document from the model: not completed, not a snippet elsewhere
    config = pipeline.pipeline_config(ls.config.completion)
    if invoked:
        config = replace(config, min_token_probability=0.0)
    if config.temperature > 0 or not backend.ranks_first_token:
        alternatives = 1  # a first-token rank means nothing to sampling, or to a plain OpenAI server
    others = ls.store.others(uri, ls.roots, ls.config.exclude) if config.prompt.neighbours else []

    def run(shown: ShownSuggestion | None, token, rank: int = 0) -> pipeline.Outcome:
        return pipeline.complete(
            backend, doc_key, text, line, character, encoding=encoding, config=config, path=path, others=others,
            previous_snippets=ls.snippets.get(doc_key, ()), shown=shown, cancel=token, first_token_rank=rank)

    def job(token) -> list[pipeline.Outcome]:
        first = run(None if resample else ls.shown.get(doc_key), token)
        if alternatives == 1:
            return [first]
        # the other lines the pipeline compared come first (no further decode; the
        # model is asked when the first is the suggestion shown, reused), then those of the next
        # likeliest first tokens
        branched = first if first.result is not None else run(None, token)
        more = [o for o in (branched, *branched.runners_up) if o is not first
                and (o.suggestion is None or first.suggestion is None or o.suggestion.text != first.suggestion.text)]
        more = more[:alternatives - 1]
        return [first, *more, *(run(None, token, rank)
                                for rank in range(branched.ranks, branched.ranks + alternatives - 1 - len(more)))]

    try:
        # the same buffer, cursor and settings (VS Code's inline and completion requests for one
        # keystroke) share one engine run rather than the second cancelling the first
        outcomes = await ls.scheduler.run(doc_key, job, same=(text, line, character, config, alternatives))
    except Superseded:
        return []
    except BackendError as exc:
        report_backend_error(ls, str(exc))
        return []
    except Exception as exc:
        ls.log(types.MessageType.Error, f"fim-lsp: completion failed: {exc}\n{traceback.format_exc()}")
        raise JsonRpcInternalError(f"completion failed: {type(exc).__name__}: {exc}") from None
    latency_ms = (time.perf_counter() - start) * 1000  # request arrival to answer
    if ls.backend_error:
        ls.backend_error = ""
        ls.log(types.MessageType.Info, "fim-lsp: completions work again")
    ls.latency.add(latency_ms)
    ls.last = last_figures(outcomes[0], latency_ms)
    ls.snippets[doc_key] = outcomes[0].snippets
    by_text: dict[str, pipeline.Outcome] = {}  # each text once, in the order the model ranked them
    for outcome in outcomes:
        if outcome.suggestion is not None:
            by_text.setdefault(outcome.suggestion.text, outcome)
    shown = list(by_text.values())
    if not shown:
        ls.shown.pop(doc_key, None)
        return []
    ls.shown[doc_key] = ShownSuggestion(shown[0].context.prefix, shown[0].context.suffix, shown[0].suggestion)
    ls.acceptance.shown += 1
    start_pos = offset_to_position(doc_text, cursor, encoding)
    placed = []
    for outcome in shown:
        suggestion = outcome.suggestion
        ls.suggestions += 1
        end_pos = offset_to_position(doc_text, min(cursor + suggestion.replace_chars, len(doc_text)), encoding)
        command = types.Command(title="fim-lsp: suggestion accepted", command=ACCEPTED,
                                arguments=[{"uri": uri, "id": ls.suggestions, "chars": len(suggestion.text)}])
        placed.append(Placed(suggestion.text, types.Range(types.Position(*start_pos), types.Position(*end_pos)),
                             command))
    return placed


def report_backend_error(ls: FimServer, message: str) -> None:
    """Show the first failure of a run (typing on would repeat it at every key); log the rest."""
    if ls.backend_error:
        ls.log(types.MessageType.Warning, f"fim-lsp: {message}")
    else:
        ls.show(types.MessageType.Error, f"fim-lsp: {message}")
    ls.backend_error = message


def last_figures(outcome: pipeline.Outcome, latency_ms: float) -> dict[str, Any]:
    """What the latest completion cost, for `fim-lsp/status` (the demo prints it per keystroke)."""
    r = outcome.result
    if r is None:
        return {"reused": True, "prompt_tokens": 0, "prefill_tokens": 0, "reused_tokens": 0,
                "generated_tokens": 0, "latency_ms": latency_ms}
    return {"reused": False, "prompt_tokens": r.prompt_tokens, "prefill_tokens": r.prefill_tokens,
            "reused_tokens": r.reused_tokens, "generated_tokens": r.generated_tokens,
            "stop_reason": r.stop_reason, "engine_ms": r.latency_ms, "latency_ms": latency_ms,
            "min_token_probability": outcome.confidence, "branches": outcome.ranks}


def notebook_view(ls: FimServer, notebook_uri: str, cell_uri: str, position: types.Position,
                  encoding: Encoding) -> tuple[str, tuple[int, int]]:
    """The notebook as one document, and the cell position mapped into it."""
    notebook = ls.store.notebooks[notebook_uri]
    cells, index, language = [], 0, "python"
    for i, (uri, kind) in enumerate(notebook.cells):
        cell_doc = ls.store.get(uri)
        text = pipeline.scrub_surrogates(cell_doc.text) if cell_doc is not None else ""
        cells.append(Cell(kind=kind, text=text))
        if uri == cell_uri:
            index = i
            language = cell_doc.language_id if cell_doc is not None else language
    text, _ = notebook_text(cells, language)
    return text, map_cell_position(cells, language, index, position.line, position.character, encoding)


@server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
async def text_document_inline_completion(
    ls: FimServer, params: types.InlineCompletionParams
) -> types.InlineCompletionList:
    invoked = params.context.trigger_kind == types.InlineCompletionTriggerKind.Invoked
    # greedy decoding would answer an explicit invocation with the suggestion shown: reuse it then,
    # and offer alternatives beside it (VS Code cycles them; it asks by hand to get more)
    resample = invoked and ls.config.completion.temperature > 0
    placed = await suggest(ls, params.text_document.uri, params.position, resample, invoked,
                           alternatives=ls.config.alternatives if invoked else 1)
    return types.InlineCompletionList(items=[
        types.InlineCompletionItem(insert_text=p.text, range=p.range, command=p.command) for p in placed
    ])


@server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(trigger_characters=[]))
async def text_document_completion(ls: FimServer, params: types.CompletionParams) -> types.CompletionList:
    found = await suggest(ls, params.text_document.uri, params.position)
    if not found:
        return types.CompletionList(is_incomplete=True, items=[])
    placed = found[0]
    first_line = placed.text.strip().splitlines()[0] if placed.text.strip() else placed.text
    item = types.CompletionItem(
        label=first_line[:60], detail=SUGGESTION_DETAIL, kind=types.CompletionItemKind.Text,
        text_edit=types.TextEdit(range=placed.range, new_text=placed.text),
        insert_text_format=types.InsertTextFormat.PlainText, filter_text="", sort_text="0", preselect=True,
        command=placed.command,
    )
    return types.CompletionList(is_incomplete=True, items=[item])


# --------------------------------------------------------------------------------------------
# Status and acceptance


@server.feature(STATUS)
def fim_lsp_status(ls: FimServer, params: Any) -> dict[str, Any]:
    ls.check_request()
    info = ls.backend.info if ls.backend is not None else None
    cache = ls.backend.cache_stats() if ls.backend is not None else {}
    return {
        "state": ls.model_state,
        "error": ls.model_error or None,
        "backend_error": ls.backend_error or None,
        "model": info.model if info else None,
        "backend": info.backend if info else None,
        "device": info.device if info else None,
        "dtype": info.dtype if info else None,
        "why": info.why if info else None,
        "n_ctx": info.n_ctx if info else None,
        "cache_slots": cache.get("slots"),
        "cache_bytes": cache.get("bytes"),
        "latency": ls.latency.summary(),
        "last": ls.last,
        "position_encoding": ls.encoding,
        "open_documents": len(ls.store.documents),
        "acceptance": {"shown": ls.acceptance.shown, "accepted": ls.acceptance.accepted,
                       "accepted_chars": ls.acceptance.accepted_chars},
        "config": {"max_new_tokens": ls.config.completion.max_new_tokens,
                   "temperature": ls.config.completion.temperature,
                   "multiline": ls.config.completion.multiline,
                   "neighbours": ls.config.completion.neighbours,
                   "debounce_ms": ls.config.debounce_ms},
    }


@server.command(ACCEPTED)
def fim_lsp_accepted(ls: FimServer, *args: Any) -> None:
    ls.acceptance.accepted += 1
    if args and isinstance(args[0], dict) and isinstance(args[0].get("chars"), int):
        ls.acceptance.accepted_chars += args[0]["chars"]


# --------------------------------------------------------------------------------------------
# Command line


def parse_listen(value: str) -> tuple[str, int]:
    """`HOST:PORT`, `:PORT` or `PORT` (loopback); raise ValueError with what is expected."""
    host, _, port = value.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--tcp expects HOST:PORT (e.g. 127.0.0.1:2087), got {value!r}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="fim-lsp: %(message)s")
    try:
        server.config = config_from_args(args)
        listen = parse_listen(args.tcp) if args.tcp else None
    except (ConfigError, ValueError) as exc:
        print(f"fim-lsp serve: {exc}", file=sys.stderr)
        return 2
    if listen is not None:
        host, port = listen
        if not is_loopback(host) and not args.token:
            print(f"fim-lsp serve: --tcp {host} is reachable from other machines; pass --token SECRET "
                  "(clients send it as initializationOptions.token) or bind 127.0.0.1", file=sys.stderr)
            return 2
        server.required_token = args.token
        server.start_tcp(host, port)
        return 0
    # LSP owns stdout: keep a private handle on it and send anything else printed to stderr.
    protocol_out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    server.start_io(sys.stdin.buffer, protocol_out)
    return 0
