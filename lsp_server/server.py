"""The language server: thin LSP handlers over the document store and the completion service.

A handler fetches the document (never from disk), calls a plain function or service, and returns an
`lsprotocol` type. The model's life cycle is `model_host.py`; the completion path, with the state
that outlives a request, is `completion.py`; how bytes reach us is `protocol.py` and `transport.py`.
Anything a client sends that we cannot use gets an LSP error or an empty result, and the server
carries on.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidRequest, JsonRpcServerNotInitialized
from pygls.lsp.server import LanguageServer

from lsp_server.completion import ACCEPTED, CompletionService
from lsp_server.config import ConfigError, ModelConfig, ServerConfig, apply_settings
from lsp_server.core.context import Encoding
from lsp_server.documents import DocumentStore, Edit
from lsp_server.edits import EditError
from lsp_server.model_host import ModelHost
from lsp_server.prefill import Background
from lsp_server.protocol import FimProtocol, strict_converter
from lsp_server.scheduler import Scheduler

log = logging.getLogger("fim-lsp")

STATUS = "fim-lsp/status"
CURSOR = "fim-lsp/cursor"  # a client's hint: {textDocument: {uri}, position}; never changes a document
SUGGESTION_DETAIL = "fim-lsp · AI suggestion"
NOTEBOOK_SYNC = types.NotebookDocumentSyncOptions(
    notebook_selector=[types.NotebookDocumentFilterWithNotebook(notebook="*")]
)


class FimServer(LanguageServer):
    """The server: its configuration, documents, scheduler, model host and completion service."""

    def __init__(self) -> None:
        super().__init__(
            "fim-lsp", "0.1.0", text_document_sync_kind=types.TextDocumentSyncKind.Incremental,
            notebook_document_sync=NOTEBOOK_SYNC, protocol_cls=FimProtocol, converter_factory=strict_converter,
        )
        # Our own document store replaces pygls' (see documents.py); its handlers are below.
        for method in (types.TEXT_DOCUMENT_DID_OPEN, types.TEXT_DOCUMENT_DID_CHANGE, types.TEXT_DOCUMENT_DID_CLOSE,
                       types.NOTEBOOK_DOCUMENT_DID_OPEN, types.NOTEBOOK_DOCUMENT_DID_CHANGE,
                       types.NOTEBOOK_DOCUMENT_DID_CLOSE):
            self.protocol.fm.builtin_features.pop(method, None)
        self.config = ServerConfig()
        self.start_config = self.config  # what the command line asked for; each TCP session starts from it
        self.store = DocumentStore()
        self.scheduler = Scheduler()
        self.model = ModelHost(on_swap=lambda: self.completions.forget_shown())
        self.completions = CompletionService(self.store, self.scheduler, self.model, self.log, self.show)
        self.background = Background(self.completions, self.scheduler, lambda: (self.config, self.encoding, self.roots),
                                     self.log)
        self.initialized = False  # `initialized` arrived
        self.required_token: str | None = None  # TCP shared secret
        self.authorized = True

    def session_ready(self) -> bool:
        """The client completed `initialize` (with the token, where one is required)."""
        return self.protocol._workspace is not None and self.authorized

    def end_session(self) -> None:
        """A TCP session ended: forget everything it sent, so the next connection starts clean
        (the loaded model stays)."""
        for uri in [*self.store.documents, *self.store.notebooks]:
            self.completions.forget(uri)
        self.store.documents.clear()
        self.store.notebooks.clear()
        self.completions.forget_shown()
        self.config = self.start_config
        self.initialized = False
        self.authorized = True
        protocol = self.protocol
        for future in protocol._request_futures.values():
            future.cancel()
        protocol._request_futures.clear()
        protocol._result_types.clear()
        protocol._shutdown = False
        protocol._workspace = None
        protocol.on_exit = None
        self.background.forget(None)
        if self.scheduler.stopped:
            self.scheduler = self.completions.scheduler = self.background.scheduler = Scheduler()
        self.scheduler.debounce_s = self.config.debounce_ms / 1000
        self.scheduler.adaptive = self.config.adaptive_wait

    def keep_model(self, model: ModelConfig) -> None:
        """A new model failed to load: the settings go back to the one still serving."""
        self.config = replace(self.config, model=model)

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
    notes: list[str] = []
    try:
        ls.config = apply_settings(ls.config, options, notes)
    except ConfigError as exc:
        ls.log(types.MessageType.Error, f"fim-lsp: initializationOptions ignored: {exc}")
    for note in notes:
        ls.log(types.MessageType.Warning, f"fim-lsp: {note}")
    ls.scheduler.debounce_s = ls.config.debounce_ms / 1000
    ls.scheduler.adaptive = ls.config.adaptive_wait


@server.feature(types.INITIALIZED)
async def initialized(ls: FimServer, params: types.InitializedParams) -> None:
    if not ls.authorized:
        return
    ls.initialized = True
    await ls.model.start_loading(ls, ls.config.model)


@server.feature(types.SHUTDOWN)
def shutdown(ls: FimServer, params: None) -> None:
    ls.scheduler.shutdown()


@server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
async def workspace_did_change_configuration(ls: FimServer, params: types.DidChangeConfigurationParams) -> None:
    if not ls.authorized:
        return
    notes: list[str] = []
    try:
        new = apply_settings(ls.config, params.settings, notes)
    except ConfigError as exc:
        ls.show(types.MessageType.Error, f"fim-lsp: settings not applied: {exc}")
        return
    for note in notes:
        ls.log(types.MessageType.Warning, f"fim-lsp: {note}")
    old, ls.config = ls.config, new
    ls.scheduler.debounce_s = new.debounce_ms / 1000
    ls.scheduler.adaptive = new.adaptive_wait
    if (new.completion, new.exclude, new.exclude_gitignored) != (old.completion, old.exclude, old.exclude_gitignored):
        # the suggestions shown and the snippets quoted were made under the old settings (with a
        # document now excluded, say): the next request asks the model again
        ls.completions.forget_shown()
    if new.model != old.model and ls.initialized:
        await ls.model.start_loading(ls, new.model)


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
    if change_text(ls, uri, params.text_document.version, params.content_changes):
        ls.background.edited(uri, cursor_after(params.content_changes))


def change_text(ls: FimServer, uri: str, version: int, changes) -> bool:
    """Apply one document's content changes, all or none; a bad change is logged and leaves the
    document out of sync (no suggestions from it) until the client sends its whole text."""
    try:
        ls.store.change(uri, version, [to_edit(c) for c in changes], ls.encoding)
        return True
    except EditError as exc:
        ls.completions.forget(uri)
        ls.log(types.MessageType.Error,
               f"fim-lsp: didChange for {uri} (version {version}) rejected, nothing applied: {exc}. "
               "The document gets no suggestions until its whole text is sent again "
               "(a change without a range, or close and reopen it)")
        return False


@server.feature(CURSOR)
def fim_lsp_cursor(ls: FimServer, params: Any) -> None:
    if ls.authorized:
        ls.background.hint(wire(params))


@server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
def text_document_did_close(ls: FimServer, params: types.DidCloseTextDocumentParams) -> None:
    ls.completions.forget(params.text_document.uri)
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
    ls.store.set_cell_kinds(uri, {cell.document: cell_kind(cell.kind) for cell in cells.data or []})
    for content in cells.text_content or []:
        if ls.store.get(content.document.uri) is not None:
            change_text(ls, content.document.uri, content.document.version, content.changes)
    ls.completions.shown.pop(uri, None)


@server.feature(types.NOTEBOOK_DOCUMENT_DID_CLOSE)
def notebook_document_did_close(ls: FimServer, params: types.DidCloseNotebookDocumentParams) -> None:
    ls.completions.forget(params.notebook_document.uri)
    ls.store.close_notebook(params.notebook_document.uri)


def to_edit(change: types.TextDocumentContentChangeEvent) -> Edit:
    """An lsprotocol content change as a store edit."""
    if isinstance(change, types.TextDocumentContentChangePartial):
        r = change.range
        return Edit(change.text, (r.start.line, r.start.character, r.end.line, r.end.character))
    return Edit(change.text)


def cursor_after(changes: list[types.TextDocumentContentChangeEvent]) -> types.Position | None:
    """Where the cursor is after one typed edit (the end of its inserted text); None when unknown
    (a whole-document change, or several changes at once)."""
    if len(changes) != 1 or not isinstance(changes[0], types.TextDocumentContentChangePartial):
        return None
    change = changes[0]
    lines = change.text.split("\n")
    start = change.range.start
    if len(lines) == 1:
        return types.Position(start.line, start.character + len(lines[0].encode("utf-16-le")) // 2)
    return types.Position(start.line + len(lines) - 1, len(lines[-1].encode("utf-16-le")) // 2)


def wire(params: Any) -> Any:
    """A notification's params as plain JSON (pygls hands unknown methods' params over as objects)."""
    if params is None or isinstance(params, (dict, list, str, int, float, bool)):
        return params
    if isinstance(params, tuple) and hasattr(params, "_asdict"):
        return {key: wire(value) for key, value in params._asdict().items()}
    if isinstance(params, (tuple, list)):
        return [wire(value) for value in params]
    return {key: wire(value) for key, value in vars(params).items()} if hasattr(params, "__dict__") else params


def cell_kind(kind: types.NotebookCellKind) -> str:
    return "markdown" if kind == types.NotebookCellKind.Markup else "code"




# --------------------------------------------------------------------------------------------
# Completions


@server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
async def text_document_inline_completion(
    ls: FimServer, params: types.InlineCompletionParams
) -> types.InlineCompletionList:
    ls.check_request()
    invoked = params.context.trigger_kind == types.InlineCompletionTriggerKind.Invoked
    # greedy decoding would answer an explicit invocation with the suggestion shown: reuse it then,
    # and offer alternatives beside it (VS Code cycles them; it asks by hand to get more)
    resample = invoked and ls.config.completion.temperature > 0
    placed = await ls.completions.suggest(
        params.text_document.uri, params.position, config=ls.config, encoding=ls.encoding, roots=ls.roots,
        resample=resample, invoked=invoked, alternatives=ls.config.alternatives if invoked else 1)
    return types.InlineCompletionList(items=[
        types.InlineCompletionItem(insert_text=p.text, range=p.range, command=p.command) for p in placed
    ])


@server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(trigger_characters=[]))
async def text_document_completion(ls: FimServer, params: types.CompletionParams) -> types.CompletionList:
    ls.check_request()
    found = await ls.completions.suggest(params.text_document.uri, params.position, config=ls.config,
                                         encoding=ls.encoding, roots=ls.roots)
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
    backend, completions = ls.model.backend, ls.completions
    info = backend.info if backend is not None else None
    cache = backend.cache_stats() if backend is not None else {}
    return {
        "state": ls.model.state,
        "error": ls.model.error or None,
        "backend_error": completions.backend_error or None,
        "model": info.model if info else None,
        "backend": info.backend if info else None,
        "device": info.device if info else None,
        "dtype": info.dtype if info else None,
        "why": info.why if info else None,
        "n_ctx": info.n_ctx if info else None,
        "cache_slots": cache.get("slots"),
        "cache_bytes": cache.get("bytes"),
        "latency": completions.latency.summary(),
        "last": completions.last,
        "position_encoding": ls.encoding,
        "open_documents": len(ls.store.documents),
        "ahead": ls.background.report(),
        "pacing": pacing_figures(ls.scheduler),
        "engine": {"runs": cache.get("runs"), "forwards": cache.get("forwards"),
                   "forwards_after_cancel": cache.get("forwards_after_cancel"),
                   "warmed_tokens": cache.get("warmed_tokens"), "prefilled_tokens": cache.get("prefilled_tokens"),
                   "reused_tokens": cache.get("reused_tokens")},
        "acceptance": {"shown": completions.acceptance.shown, "accepted": completions.acceptance.accepted,
                       "accepted_chars": completions.acceptance.accepted_chars},
        "config": {"max_new_tokens": ls.config.completion.max_new_tokens,
                   "temperature": ls.config.completion.temperature,
                   "multiline": ls.config.completion.multiline,
                   "neighbours": ls.config.completion.neighbours,
                   "debounce_ms": ls.config.debounce_ms, "adaptive_wait": ls.config.adaptive_wait,
                   "idle_prefill": ls.config.idle_prefill,
                   "prefetch": ls.config.prefetch, "cache_regions": ls.config.model.cache_regions},
    }


def pacing_figures(scheduler: Scheduler) -> dict[str, Any]:
    """The adaptive wait's moving averages and the wait a request gets now (milliseconds)."""
    pacing = scheduler.pacing
    ms = lambda s: round(s * 1000, 1) if s is not None else None  # noqa: E731
    wait = scheduler.debounce_s if scheduler.debounce_s > 0 or not scheduler.adaptive else pacing.wait_s()
    return {"typing_ms": ms(pacing.typing_s), "model_ms": ms(pacing.model_s), "wait_ms": ms(wait)}


@server.command(ACCEPTED)
def fim_lsp_accepted(ls: FimServer, *args: Any) -> None:
    chars = args[0].get("chars") if args and isinstance(args[0], dict) else None
    ls.completions.accepted(chars if isinstance(chars, int) else None)
    ls.background.accepted(args[0].get("id") if args and isinstance(args[0], dict) else None)
