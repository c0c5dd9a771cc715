"""Work ahead of the next request while the engine is idle: warm the prompt at the cursor, and
compute the suggestion that follows an accepted one.

The first suggestion after opening a file, jumping to another function or switching files is a
full prefill (seconds on a CPU); with the suffix-first prompt any cursor move is one. Clients send
`fim-lsp/cursor` hints (the cursor moved without typing, an editor became active, a notebook cell
got focus), and an edit not followed by a request counts as one. For the newest hint, while no
request is queued or running, `Background` builds the prompt a request at that cursor would send
(the same `CompletionService.locate` and `pipeline.request_for`, the same neighbour snippets) and
prefills it into the document's slot in chunks of `prefillChunkTokens`, one engine job each: a
request arriving meanwhile waits for at most the chunk in flight, then finds the prompt cached.

When a suggestion is shown, the suggestion that would follow it is computed ahead ("prefetch", as
llama.vim's speculative FIM): the prompt of the document as it will be once the shown text is
accepted, while the person reads. Pressing Tab then finds the next suggestion ready (or being
computed: the request takes over the job in flight instead of starting again). After an accept
(`fim-lsp.accepted`) whose result was not prefetched (the client inserted something else, or the
shown one was not prefetched in time), the suggestion at the new cursor is computed then. A
prefetched answer serves only the next request with exactly the same text, cursor and settings;
any other request drops it. Work ahead never changes what is shown: the warm writes the K/V
the request would compute itself, and a prefetched answer is the job the request would run, on
the same inputs; neither keeps the neighbour snippets it quoted (a request keeps those, for the
next prompt to match the cache), so whether work ahead ran, and where, never changes a later prompt.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams

from engine.api import Cancelled
from lsp_server import pipeline
from lsp_server.completion import CompletionService, Log, Where
from lsp_server.config import ServerConfig
from lsp_server.core.context import Encoding, cursor_context, offset_to_position, position_to_offset
from lsp_server.scheduler import Scheduler

log = logging.getLogger("fim-lsp")

CHUNK_MS = 100  # a background prefill step takes about this long at most: what a keystroke may wait for it
MIN_CHUNK_TOKENS = 4  # below this a step pays more for reading the weights than for the tokens

Why = Literal["hint", "edit", "accept", "shown"]
Session = Callable[[], tuple[ServerConfig, Encoding, list[str]]]  # the settings, position encoding and roots now


@dataclass(frozen=True, slots=True)
class Target:
    """Where to work ahead: the newest cursor hint (or edit, or accept)."""

    uri: str
    position: types.Position
    why: Why
    where: Where | None = None  # "shown": the document as it will be once the suggestion is accepted


@dataclass(slots=True)
class AheadCounts:
    """What work ahead did, for `fim-lsp/status`."""

    hints: int = 0  # `fim-lsp/cursor` hints taken
    hints_dropped: int = 0  # malformed or for a document that is not open
    prefills: int = 0  # prompts warmed to the end
    chunks: int = 0  # engine jobs those took
    prefill_tokens: int = 0  # prompt tokens prefilled ahead
    prefill_saved_tokens: int = 0  # of those, found cached by the request that followed
    prefetches: int = 0  # suggestions computed ahead: for a shown one's accept, or after an accept
    prefetch_served: int = 0  # answered a request (ready, or taken over while it ran)
    prefetch_dropped: int = 0  # the next request asked for something else
    prefetch_saved_tokens: int = 0  # prompt and generated tokens the served ones spared
    most_chunks_waited: int = 0  # the most background chunks that finished while one request waited

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class Background:
    """The idle prefill and the prefetch after accept; `CompletionService.ahead` points here."""

    def __init__(self, completions: CompletionService, scheduler: Scheduler, session: Session, log: Log) -> None:
        self.completions, self.scheduler, self.session, self._log = completions, scheduler, session, log
        self.counts = AheadCounts()
        self.last_hint: Target | None = None  # the newest hint taken, for `fim-lsp/status`
        self._target: Target | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._edits: dict[str, asyncio.TimerHandle] = {}  # uri -> the pending edit hint
        self._warmed: dict[str, int] = {}  # doc key -> tokens warmed since its last request
        self._prefetched: dict[str, tuple[tuple, list[pipeline.Outcome]]] = {}  # doc key -> (same, outcomes)
        self._running: tuple[str, tuple, asyncio.Future] | None = None  # the prefetch on the engine: doc key, same
        self._chunks_at: dict[str, int] = {}  # doc key -> `counts.chunks` when its request arrived
        self._ms_per_token: float | None = None  # what a warmed prompt token took, moving average
        completions.ahead = self

    # -- what the handlers report ------------------------------------------------------------------

    def hint(self, params: Any) -> None:
        """A `fim-lsp/cursor` notification: `{textDocument: {uri}, position: {line, character}}`."""
        try:
            uri = params["textDocument"]["uri"]
            line, character = params["position"]["line"], params["position"]["character"]
            if not isinstance(uri, str) or not all(isinstance(v, int) and v >= 0 for v in (line, character)):
                raise TypeError("uri must be a string, line and character non-negative integers")
        except (KeyError, TypeError) as exc:
            self.counts.hints_dropped += 1
            self._log(types.MessageType.Warning, f"fim-lsp: malformed fim-lsp/cursor hint dropped ({exc}): {params!r}")
            return
        if self.completions.store.get(uri) is None:
            self.counts.hints_dropped += 1  # a document the client did not open here (or closed): a hint only
            return
        self.counts.hints += 1
        self.last_hint = Target(uri, types.Position(line, character), "hint")
        self.aim(self.last_hint)

    def edited(self, uri: str, position: types.Position | None) -> None:
        """A document changed with the cursor after the edit at `position`: warm there unless a
        request follows within `prefillDelayMs` (it usually does, and does the work itself)."""
        if (handle := self._edits.pop(uri, None)) is not None:
            handle.cancel()
        config, _, _ = self.session()
        if position is None or not config.idle_prefill:
            return
        loop = asyncio.get_running_loop()
        self._edits[uri] = loop.call_later(config.prefill_delay_ms / 1000, self._edit_due, uri, position)

    def accepted(self, suggestion_id: Any) -> None:
        """A suggestion was accepted: compute the next one at the cursor after its text."""
        config, encoding, _ = self.session()
        placed = self.completions.placed.get(suggestion_id) if isinstance(suggestion_id, int) else None
        if not config.prefetch or placed is None:
            return
        uri, cursor, text = placed
        doc = self.completions.store.get(uri)
        if doc is None or doc.text[cursor:cursor + len(text)] != text:
            return  # the client has not (or not exactly) inserted it: nothing to predict from
        line, character = offset_to_position(doc.text, cursor + len(text), encoding)
        self.aim(Target(uri, types.Position(line, character), "accept"))

    def shown(self, where: Where, text: str, replace_chars: int) -> None:
        """`text` is shown at `where` (replacing `replace_chars` characters after the cursor):
        compute the suggestion that follows it, for the request an accept will send."""
        config, _, _ = self.session()
        if not config.prefetch or not text:
            return
        accepted = after_accept(where, text, replace_chars)
        line, character = offset_to_position(accepted.doc_text, accepted.cursor, accepted.encoding)
        self.aim(Target(accepted.uri, types.Position(line, character), "shown", accepted))

    def report(self) -> dict[str, Any]:
        """The `ahead` section of `fim-lsp/status`: the counts, whether work is pending, and where the
        newest hint taken pointed (a client's end-to-end test reads it to see its hints arrive)."""
        last = self.last_hint
        where = None if last is None else {"uri": last.uri, "line": last.position.line,
                                           "character": last.position.character}
        return {**self.counts.as_dict(), "working": self.working, "last_hint": where}

    # -- what the completion path asks -------------------------------------------------------------

    @property
    def working(self) -> bool:
        """A hint, edit or accept is waiting or being worked on."""
        return self._target is not None or bool(self._edits)

    async def take(self, doc_key: str, same: tuple) -> list[pipeline.Outcome] | None:
        """The outcomes prefetched for exactly this request (awaiting the prefetch when it is still
        on the engine), or None: the request runs its own job. Raises Cancelled when a newer
        request cancelled the prefetch this one took over."""
        self._target = None  # a request moved the cursor: older hints are stale
        self._chunks_at[doc_key] = self.counts.chunks
        for handle in self._edits.values():
            handle.cancel()
        self._edits.clear()
        running, self._running = self._running, None
        if running is not None and running[:2] == (doc_key, same) and not running[2].done():
            outcomes = await asyncio.shield(running[2])  # a newer request cancels it: Cancelled
            return self._served(outcomes)
        found = self._prefetched.pop(doc_key, None)
        if found is None:
            return None
        if found[0] != same:
            self.counts.prefetch_dropped += 1
            return None
        return self._served(found[1])

    def _served(self, outcomes: list[pipeline.Outcome]) -> list[pipeline.Outcome]:
        self.counts.prefetch_served += 1
        result = outcomes[0].result
        if result is not None:
            self.counts.prefetch_saved_tokens += result.prefill_tokens + result.generated_tokens
        return outcomes

    def answered(self, doc_key: str, result: Any) -> None:
        if (at := self._chunks_at.pop(doc_key, None)) is not None:
            self.counts.most_chunks_waited = max(self.counts.most_chunks_waited, self.counts.chunks - at)
        warmed = self._warmed.pop(doc_key, 0)
        if result is not None and warmed:
            self.counts.prefill_saved_tokens += min(warmed, result.reused_tokens)

    def forget(self, doc_key: str | None) -> None:
        if doc_key is None:
            self._prefetched.clear()
            self._warmed.clear()
        else:
            self._prefetched.pop(doc_key, None)
            self._warmed.pop(doc_key, None)

    # -- the worker --------------------------------------------------------------------------------

    def aim(self, target: Target) -> None:
        """Make `target` the newest place to work ahead at (an older one is dropped)."""
        config, _, _ = self.session()
        if not (config.prefetch if target.why in ("accept", "shown") else config.idle_prefill):
            return
        if target.why == "edit" and self._target is not None and \
                (self._target.uri, self._target.position) == (target.uri, target.position):
            return  # the edit an accept made: its prefetch warms there anyway
        self._target = target
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    def _edit_due(self, uri: str, position: types.Position) -> None:
        self._edits.pop(uri, None)
        if self.completions.store.get(uri) is not None:
            self.aim(Target(uri, position, "edit"))

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while (target := self._target) is not None:
                await self.scheduler.idle()
                if target is not self._target:
                    continue
                try:
                    finished = await self._work(target)
                except Exception as exc:  # work ahead must never take the server down
                    self._log(types.MessageType.Warning, f"fim-lsp: work ahead failed: {type(exc).__name__}: {exc}")
                    finished = True
                if finished and self._target is target:
                    self._target = None

    async def _work(self, target: Target) -> bool:
        """Warm (and for a shown suggestion or an accept, prefetch) at `target`; False when a
        request interrupted it."""
        backend = self.completions.model.backend
        if backend is None or not hasattr(backend, "warm"):
            return True  # still loading, or a backend with no cache of its own (a remote server)
        config, encoding, roots = self.session()
        where = target.where
        if where is None:
            try:
                where = self.completions.locate(target.uri, target.position, config=config, encoding=encoding,
                                                roots=roots)
            except JsonRpcInvalidParams as exc:
                self._log(types.MessageType.Warning, f"fim-lsp: cursor hint dropped: {exc}")
                return True
            if where is None:
                return True  # an excluded document
        prefetch = target.why in ("accept", "shown")
        found = self._prefetched.get(where.doc_key)
        if prefetch and found is not None and found[0] == where.same(1, backend):
            return True  # the accepted text was prefetched while it was shown
        if not await self._warm(target, where, backend, config.prefill_chunk_tokens):
            return False
        if prefetch:
            return await self._prefetch(target, where, backend)
        return True

    async def _warm(self, target: Target, where: Where, backend: Any, chunk_tokens: int) -> bool:
        snippets = self.completions.snippets.get(where.doc_key, ())

        def chunk(token, tokens: int) -> tuple[int, int]:  # on the engine thread, as the request's prompt building
            ctx = cursor_context(where.text, where.line, where.character, where.encoding)
            # the snippets the request at this place will quote, kept by that request, not here
            _, _, request = pipeline.request_for(backend, where.doc_key, ctx, config=where.config,
                                                 path=where.path, repo=where.repo, others=where.others,
                                                 previous_snippets=snippets)
            return backend.warm(request, tokens, token)

        while True:
            if self._target is not target or self.scheduler.busy:
                return False
            tokens = chunk_size(chunk_tokens, self._ms_per_token)
            started = time.perf_counter()
            try:
                written, left = await self.scheduler.background(lambda token: chunk(token, tokens))
            except Cancelled:
                return False
            if written:
                took = (time.perf_counter() - started) * 1000 / written
                self._ms_per_token = took if self._ms_per_token is None else 0.5 * took + 0.5 * self._ms_per_token
                self.counts.chunks += 1
                self.counts.prefill_tokens += written
                self._warmed[where.doc_key] = self._warmed.get(where.doc_key, 0) + written
            if left == 0:
                self.counts.prefills += written > 0
                return True

    async def _prefetch(self, target: Target, where: Where, backend: Any) -> bool:
        if self._target is not target or self.scheduler.busy:
            return False
        same = where.same(1, backend)
        running = asyncio.ensure_future(self.scheduler.background(self.completions.job_for(where, backend, ahead=True)))
        self._running = (where.doc_key, same, running)
        try:
            outcomes = await asyncio.shield(running)
        except Cancelled:
            return False  # a request came for something else
        taken = self._running is None or self._running[2] is not running  # a request took it over (`take`)
        if not taken:
            self._running = None
        self.counts.prefetches += 1
        if taken:
            return False
        self._prefetched[where.doc_key] = (same, outcomes)  # for the request an accept sends
        return self._target is target


def chunk_size(most: int, ms_per_token: float | None) -> int:
    """Prompt tokens for the next background prefill step: as many as fit in `CHUNK_MS` at the
    measured speed (the first step, with none measured yet, is the smallest), at most `most`."""
    if ms_per_token is None:
        return min(most, MIN_CHUNK_TOKENS)
    return max(min(most, MIN_CHUNK_TOKENS), min(most, int(CHUNK_MS / max(ms_per_token, 1e-3))))


def after_accept(where: Where, text: str, replace_chars: int) -> Where:
    """`where` as it will be once `text` is accepted there: inserted at the cursor over
    `replace_chars` characters, the cursor after it (in the document and in the prompt's text)."""
    doc_text = where.doc_text[:where.cursor] + text + where.doc_text[where.cursor + replace_chars:]
    at = position_to_offset(where.text, where.line, where.character, where.encoding)
    prompt_text = where.text[:at] + text + where.text[at + replace_chars:]
    line, character = offset_to_position(prompt_text, at + len(text), where.encoding)
    return replace(where, doc_text=doc_text, cursor=where.cursor + len(text), text=prompt_text, line=line,
                   character=character)
