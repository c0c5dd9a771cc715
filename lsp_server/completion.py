"""The completion service: from a request's document and position to the suggestions to show.

It owns what outlives one request: the suggestion shown per document (a user typing into it is
served without the model), the neighbour snippets each document's last prompt quoted (kept stable
so the cached prompt is reused), latency and acceptance counters, and the latest figures for
`fim-lsp/status`. The model runs on the scheduler's engine thread, never on the event loop.
"""
from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from lsprotocol import types
from pygls.exceptions import JsonRpcInternalError, JsonRpcInvalidParams

from engine.api import BackendError, Cancelled
from lsp_server import pipeline
from lsp_server.config import ServerConfig
from lsp_server.core.context import Encoding, offset_to_position, position_to_offset
from lsp_server.core.notebook import Cell, map_cell_position, notebook_style, notebook_text
from lsp_server.core.postprocess import ShownSuggestion
from lsp_server.documents import DocumentStore, excluded, repo_name, uri_to_path, workspace_file
from lsp_server.ignore import GitignoreFiles
from lsp_server.model_host import ModelHost
from lsp_server.scheduler import LatencyWindow, Scheduler, Superseded

ACCEPTED = "fim-lsp.accepted"  # the command a suggestion carries; the client runs it on accept
PLACED_KEPT = 16  # suggestions remembered for an accept to find where the cursor went

Log = Callable[[types.MessageType, str], None]


@dataclass(slots=True)
class Acceptance:
    """How many suggestions were shown and accepted (kept in this process only)."""

    shown: int = 0
    accepted: int = 0
    accepted_chars: int = 0


@dataclass(frozen=True, slots=True)
class Where:
    """A cursor resolved against the open documents: what the pipeline runs on for it."""

    uri: str  # the document asked about (a notebook's cell)
    doc_key: str  # its cache slot and per-document state: the notebook for a cell
    doc_text: str  # the text of `uri`
    cursor: int  # the cursor's offset in `doc_text` (code points)
    text: str  # what the prompt is built from (a notebook as one document)
    line: int  # the cursor in `text`
    character: int
    encoding: Encoding
    path: str | None  # the prompt's file name
    others: list[tuple[str, str]]  # (path, text) of other open documents, for neighbour snippets
    config: pipeline.PipelineConfig
    repo: str | None = None  # StarCoder's <reponame>: the workspace folder's name

    def same(self, alternatives: int, backend: object) -> tuple:
        """What makes two requests identical: they share one engine run (and a prefetched answer).
        The backend is part of it: after a reload, a run on the replaced model answers nobody new."""
        return (self.text, self.line, self.character, self.config, alternatives, backend)


class Ahead(Protocol):
    """Work done ahead of requests (`lsp_server.prefill.Background`), as the completion path sees it."""

    async def take(self, doc_key: str, same: tuple) -> list[pipeline.Outcome] | None:
        """The outcomes prefetched for exactly this request, or None (what was prefetched is dropped)."""
        ...

    def shown(self, where: Where, text: str, replace_chars: int) -> None:
        """`text` was placed at `where`: work out what follows it, should it be accepted."""
        ...

    def answered(self, doc_key: str, result: Any) -> None:
        """A request for `doc_key` was answered with `result` (a CompletionResult or None)."""
        ...

    def forget(self, doc_key: str | None) -> None:
        """Drop what was computed ahead for `doc_key` (None: for every document)."""
        ...


@dataclass(slots=True)
class Placed:
    """A suggestion and where it lands in the client's document."""

    text: str
    range: types.Range
    command: types.Command


class CompletionService:
    """Suggestions for requests, with the per-document state that makes the next one cheap."""

    def __init__(self, store: DocumentStore, scheduler: Scheduler, model: ModelHost, log: Log, show: Log) -> None:
        self.store, self.scheduler, self.model = store, scheduler, model
        self._log, self._show = log, show
        self.latency = LatencyWindow(100)
        self.acceptance = Acceptance()
        self.backend_error = ""  # the last request's BackendError while they keep failing; "" once one works
        self.shown: dict[str, ShownSuggestion] = {}  # doc key -> the suggestion on screen
        self.snippets: dict[str, tuple] = {}  # doc key -> the neighbour snippets its last prompt quoted
        self.suggestions = 0  # suggestions placed so far (each carries its number to the accept command)
        self.last: dict[str, Any] = {}  # the latest completion's token figures
        self.gitignores = GitignoreFiles()  # the workspace's .gitignore files, for excludeGitignored
        self.placed: dict[int, tuple[str, int, str]] = {}  # suggestion number -> (uri, cursor offset, text), latest few
        self.ahead: Ahead | None = None  # background work that may have answered a request already

    def forget_shown(self) -> None:
        """What was shown and quoted was made under other settings or another model: ask again."""
        self.shown.clear()
        self.snippets.clear()
        if self.ahead is not None:
            self.ahead.forget(None)

    def gitignored(self, uri: str, roots: list[str]) -> bool:
        """Whether the .gitignore files of the workspace folder holding `uri` exclude it."""
        found = workspace_file(uri, roots)
        return found is not None and self.gitignores.ignores(*found)

    def forget(self, doc_key: str) -> None:
        """A document closed: cancel its request and drop its cache slot (on the engine thread)."""
        self.scheduler.cancel(doc_key)
        self.shown.pop(doc_key, None)
        self.snippets.pop(doc_key, None)
        if self.ahead is not None:
            self.ahead.forget(doc_key)
        backend = self.model.backend
        if backend is not None:
            asyncio.ensure_future(self.scheduler.call(lambda: backend.drop(doc_key)))

    def accepted(self, chars: int | None) -> None:
        self.acceptance.accepted += 1
        if chars is not None:
            self.acceptance.accepted_chars += chars

    async def suggest(self, uri: str, position: types.Position, *, config: ServerConfig, encoding: Encoding,
                      roots: list[str], resample: bool = False, invoked: bool = False,
                      alternatives: int = 1) -> list[Placed]:
        """Run the pipeline for a request at `position` in `uri`: the suggestions to show, best
        first (none when there is nothing to show).

        `resample`: ask the model again even where the suggestion shown still fits (a user who
        invokes a suggestion by hand while sampling wants another sample, not the same one).
        `invoked`: the user asked by hand, so a suggestion is shown however unsure the model was
        (minTokenProbability applies to automatic requests). `alternatives` > 1 adds the other
        lines the pipeline compared (likeliest first), then greedy suggestions from the next
        first-token ranks (greedy decoding only), each text once."""
        backend = self.model.backend
        if self.store.get(uri) is not None and backend is None:
            return []  # still loading (or failed): an empty answer, never a wait
        start = time.perf_counter()
        where = self.locate(uri, position, config=config, encoding=encoding, roots=roots, invoked=invoked)
        if where is None or backend is None:
            return []  # the user keeps this document from the model: not completed, not a snippet elsewhere
        if where.config.temperature > 0 or not backend.ranks_first_token:
            alternatives = 1  # a first-token rank means nothing to sampling, or to a plain OpenAI server
        doc_key, doc_text, cursor = where.doc_key, where.doc_text, where.cursor
        same = where.same(alternatives, backend)
        try:
            outcomes = await self.ahead.take(doc_key, same) if self.ahead is not None else None
            prefetched = outcomes is not None
            if outcomes is None:
                # the same buffer, cursor and settings (VS Code's inline and completion requests for
                # one keystroke) share one engine run rather than the second cancelling the first
                outcomes = await self.scheduler.run(doc_key, self.job_for(where, backend, resample, alternatives),
                                                    same=same)
        except (Superseded, Cancelled):  # Cancelled: a newer request cancelled the prefetch this one took over
            return []
        except BackendError as exc:
            self.report_backend_error(str(exc))
            return []
        except Exception as exc:
            self._log(types.MessageType.Error, f"fim-lsp: completion failed: {exc}\n{traceback.format_exc()}")
            raise JsonRpcInternalError(f"completion failed: {type(exc).__name__}: {exc}") from None
        if self.model.backend is not backend:
            # the model was replaced while this ran: its answer is the old model's, and whatever the
            # swap cleared (the suggestion shown, the snippets quoted) must not come back from it
            return []
        if self.ahead is not None:
            self.ahead.answered(doc_key, outcomes[0].result)
        latency_ms = (time.perf_counter() - start) * 1000  # request arrival to answer
        if self.backend_error:
            self.backend_error = ""
            self._log(types.MessageType.Info, "fim-lsp: completions work again")
        self.latency.add(latency_ms)
        self.last = {**last_figures(outcomes[0], latency_ms), "prefetched": prefetched}
        self.snippets[doc_key] = outcomes[0].snippets
        by_text: dict[str, pipeline.Outcome] = {}  # each text once, in the order the model ranked them
        for outcome in outcomes:
            if outcome.suggestion is not None:
                by_text.setdefault(outcome.suggestion.text, outcome)
        shown = list(by_text.values())
        if not shown:
            self.shown.pop(doc_key, None)
            return []
        self.shown[doc_key] = ShownSuggestion(shown[0].context.prefix, shown[0].context.suffix, shown[0].suggestion)
        self.acceptance.shown += 1
        start_pos = offset_to_position(doc_text, cursor, encoding)
        placed = []
        for outcome in shown:
            suggestion = outcome.suggestion
            self.suggestions += 1
            end_pos = offset_to_position(doc_text, min(cursor + suggestion.replace_chars, len(doc_text)), encoding)
            command = types.Command(title="fim-lsp: suggestion accepted", command=ACCEPTED,
                                    arguments=[{"uri": uri, "id": self.suggestions, "chars": len(suggestion.text)}])
            placed.append(Placed(suggestion.text, types.Range(types.Position(*start_pos), types.Position(*end_pos)),
                                 command))
            self.placed[self.suggestions] = (where.uri, cursor, suggestion.text)
            while len(self.placed) > PLACED_KEPT:
                del self.placed[next(iter(self.placed))]
        if self.ahead is not None:
            self.ahead.shown(where, shown[0].suggestion.text, shown[0].suggestion.replace_chars)
        return placed

    def locate(self, uri: str, position: types.Position, *, config: ServerConfig, encoding: Encoding,
               roots: list[str], invoked: bool = False) -> Where | None:
        """Resolve a cursor against the open documents (None: the document is excluded, or out of
        sync since a change failed to apply).

        Raises JsonRpcInvalidParams for a document that is not open or a position outside it."""
        doc = self.store.get(uri)
        if doc is None:
            raise JsonRpcInvalidParams(f"the document {uri} is not open (send textDocument/didOpen first)")
        if not doc.in_sync:
            return None  # a change failed to apply: we do not know the client's text (documents.py)
        doc_text = pipeline.scrub_surrogates(doc.text)
        try:
            cursor = position_to_offset(doc_text, position.line, position.character, encoding)
        except ValueError as exc:
            raise JsonRpcInvalidParams(f"bad position {position.line}:{position.character}: {exc}") from None
        doc_key, text, line, character = uri, doc_text, position.line, position.character
        path = uri_to_path(uri, roots)
        if doc.notebook_uri is not None:
            if not all(c.in_sync for u, _ in self.store.notebooks[doc.notebook_uri].cells
                       if (c := self.store.get(u)) is not None):
                return None  # a cell's change failed to apply: the notebook's text is not known
            doc_key = doc.notebook_uri
            text, (line, character) = self.notebook_view(doc.notebook_uri, uri, position, encoding)
            path = uri_to_path(doc.notebook_uri, roots)
        repo = repo_name(doc.notebook_uri or uri, roots)
        if excluded(path, config.exclude):
            return None
        pipeline_config = pipeline.pipeline_config(config.completion)
        if invoked:
            pipeline_config = replace(pipeline_config, min_token_probability=0.0)
        hidden = (lambda other: self.gitignored(other, roots)) if config.exclude_gitignored else None
        others = self.store.others(uri, roots, config.exclude, hidden) if pipeline_config.prompt.neighbours else []
        return Where(uri, doc_key, doc_text, cursor, text, line, character, encoding, path, others, pipeline_config,
                     repo)

    def job_for(self, where: Where, backend, resample: bool = False, alternatives: int = 1,
                ahead: bool = False) -> Callable[[Any], list[pipeline.Outcome]]:
        """The engine job that completes at `where`: the outcomes to show, best first. A request's
        job keeps the snippets its prompt quotes as soon as it is built (`pipeline.complete`'s
        `quoted`); work `ahead` of a request keeps nothing: the request it serves keeps them when
        it is answered, so whether it ran never changes a later prompt."""
        doc_key = where.doc_key
        keep = None if ahead else (lambda snippets: self.snippets.__setitem__(doc_key, snippets))

        def run(shown: ShownSuggestion | None, token, rank: int = 0) -> pipeline.Outcome:
            return pipeline.complete(
                backend, doc_key, where.text, where.line, where.character, encoding=where.encoding,
                config=where.config, path=where.path, repo=where.repo, others=where.others,
                previous_snippets=self.snippets.get(doc_key, ()), shown=shown, cancel=token,
                first_token_rank=rank, quoted=keep)

        def job(token) -> list[pipeline.Outcome]:
            first = run(None if resample else self.shown.get(doc_key), token)
            if alternatives == 1:
                return [first]
            # the other lines the pipeline compared come first (no further decode; the model is
            # asked when the first is the suggestion shown, reused), then those of the next
            # likeliest first tokens
            compared = first if first.result is not None else run(None, token)
            more = [o for o in (compared, *compared.other_lines) if o is not first
                    and (o.suggestion is None or first.suggestion is None
                         or o.suggestion.text != first.suggestion.text)]
            more = more[:alternatives - 1]
            return [first, *more, *(run(None, token, rank)
                                    for rank in range(compared.beam, compared.beam + alternatives - 1 - len(more)))]

        return job

    def report_backend_error(self, message: str) -> None:
        """Show the first failure of a run (typing on would repeat it at every key); log the rest."""
        if self.backend_error:
            self._log(types.MessageType.Warning, f"fim-lsp: {message}")
        else:
            self._show(types.MessageType.Error, f"fim-lsp: {message}")
        self.backend_error = message

    def notebook_view(self, notebook_uri: str, cell_uri: str, position: types.Position,
                      encoding: Encoding) -> tuple[str, tuple[int, int]]:
        """The notebook as one document, and the cell position mapped into it."""
        notebook = self.store.notebooks[notebook_uri]
        cells, index, language = [], 0, "python"
        for i, (uri, kind) in enumerate(notebook.cells):
            cell_doc = self.store.get(uri)
            text = pipeline.scrub_surrogates(cell_doc.text) if cell_doc is not None else ""
            cells.append(Cell(kind=kind, text=text))
            if uri == cell_uri:
                index = i
                language = cell_doc.language_id if cell_doc is not None else language
        # a model trained on StarCoder's Jupyter format is shown notebooks in it; others the percent format
        backend = self.model.backend
        style = notebook_style(backend.fim) if backend is not None else "percent"
        text, _ = notebook_text(cells, language, style)
        return text, map_cell_position(cells, language, index, position.line, position.character, encoding, style)


def last_figures(outcome: pipeline.Outcome, latency_ms: float) -> dict[str, Any]:
    """What the latest completion cost, for `fim-lsp/status` (the demo prints it per keystroke)."""
    r = outcome.result
    if r is None:
        return {"reused": True, "prompt_tokens": 0, "prefill_tokens": 0, "reused_tokens": 0,
                "generated_tokens": 0, "latency_ms": latency_ms}
    return {"reused": False, "prompt_tokens": r.prompt_tokens, "prefill_tokens": r.prefill_tokens,
            "reused_tokens": r.reused_tokens, "generated_tokens": r.generated_tokens,
            "stop_reason": r.stop_reason, "engine_ms": r.latency_ms, "latency_ms": latency_ms,
            "min_token_probability": outcome.confidence, "beam": outcome.beam}
