"""The contract every backend (torch, ONNX Runtime, remote server, reference) fulfils.

A backend takes a prompt string for one document slot and returns the raw generation with token
statistics. Prompt building and post-processing live outside it (in `lsp_server`'s pure core);
the backend owns tokenisation, the per-document KV cache and decoding. Pure: no torch here.
"""
from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass, field
from typing import Literal, NewType, Protocol

from engine.fim import FimTokens

DocId = NewType("DocId", str)
StopReason = Literal["eos", "stop_token", "stop_string", "line_end", "block_end", "loop", "max_tokens",
                     "time_budget", "cancelled"]


class Cancelled(Exception):
    """Raised by a backend when the request's CancelToken fired between decode steps."""


class BackendError(Exception):
    """The backend could not serve a request (a remote server down, slow, refusing or garbled).

    The message names the server and what to do; the language server shows it once and answers
    with an empty result, and the next request tries again.
    """


class CancelToken:
    """A flag a request's owner sets from any thread; the engine checks it between steps."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        """Ask the engine to stop at its next step boundary."""
        self._event.set()

    @property
    def cancelled(self) -> bool:
        """True once cancel() was called."""
        return self._event.is_set()

    @property
    def fired(self) -> bool:
        """True once cancel() was called; read for bookkeeping, never a step at which the engine stops."""
        return self._event.is_set()


def through_line_end(text: str) -> int | None:
    """Length of `text` up to and including its first line break after non-blank text; None when
    it has none yet. Leading blank lines do not count: a suggestion may start on the next line."""
    start = len(text) - len(text.lstrip())
    cut = text.find("\n", start)
    return None if cut < 0 else cut + 1


def indent_width(line: str) -> int:
    """Columns of leading whitespace, tabs counted as 4."""
    stripped = line.lstrip(" \t")
    return len(line[: len(line) - len(stripped)].expandtabs(4))


def through_dedent(text: str, column: int) -> int | None:
    """Length of `text` through the first complete line after its first line break that holds text
    indented less than `column`; None when there is none yet. That line ends a block suggestion
    (it is kept only when it closes the block's brackets), so what follows is never shown."""
    start = text.find("\n")
    while start >= 0:
        end = text.find("\n", start + 1)
        if end < 0:
            return None
        line = text[start + 1:end]
        if line.strip() and indent_width(line) < column:
            return end + 1
        start = end
    return None


@dataclass(slots=True)
class CompletionRequest:
    """One generation for one document slot."""

    doc_id: DocId
    prompt: str  # the exact prompt text, FIM special tokens spelled out
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    stop_strings: tuple[str, ...] = ()
    time_budget_s: float | None = None  # wall-clock cap on decoding; None = no cap
    heal: bool = False  # back off the prompt's last token and re-spell it (engine.healing); text excludes it
    stop_at_line_end: bool = False  # end at the first line break after text (kept in the text): a one-line suggestion
    stop_at_dedent: int | None = None  # a block: end after the first later line indented less (`through_dedent`)
    stop_at_loop: bool = False  # end at a loop's first copy (`through_loop`): a suggestion, not raw text
    # ask a remote server for each token's log-probability too (in-process backends always report them)
    token_probabilities: bool = False
    # greedy: start from the first token ranked this far below the best (an alternative suggestion);
    # honoured where `Backend.ranks_first_token` is true, ignored elsewhere
    first_token_rank: int = 0
    # greedy, one line (`stop_at_line_end`): search this many lines at once (engine.beam) and return
    # the likeliest, the others in `CompletionResult.other_lines`; honoured where
    # `Backend.searches_lines` is true (1: plain greedy decoding)
    beam: int = 1


LOOP = re.compile(r"(.{2,16}?)\1{3,}")  # a unit of 2-16 characters and 3 or more copies of it, on one line
LOOP_MIN_CHARS = 12  # a run shorter than this is left alone (`abab` `abab` is no loop yet)


def through_loop(text: str) -> int | None:
    """Length of `text` through the first copy of a unit that a line repeats 4 or more times in a
    row (2-16 characters holding a letter, 12 or more in all); None when no line does. That is a
    model caught in a loop (`os.path.path.path.path`, `, 'a', 'a', 'a', 'a'`): the copies after
    the first are dropped. The cut depends only on the text up to the fourth copy, so decoding that
    stops there and a server's longer answer are cut alike; the run is counted from its earliest
    start, so `['r', 'g', 'g', 'g', 'g'` keeps `['r', 'g` (the unit is `', 'g`). Runs of
    punctuation, digits or spaces (`# ====`, `0, 0, 0, 0`) are code."""
    for run in LOOP.finditer(text):
        unit = run.group(1)
        if len(run.group(0)) >= LOOP_MIN_CHARS and any(c.isalpha() for c in unit):
            return run.start() + len(unit)
    return None


def suggestion_end(text: str, line_end: bool, dedent: int | None, loop: bool) -> tuple[int, StopReason] | None:
    """Where a suggestion's text stops mattering, and the reason: the end of its line (`line_end`),
    of its block (`dedent` column) or a loop's first copy (`loop`), whichever comes first; None
    before that point is generated."""
    ends = [(end, reason) for end, reason in ((through_line_end(text) if line_end else None, "line_end"),
                                              (through_dedent(text, dedent) if dedent is not None else None,
                                               "block_end"),
                                              (through_loop(text) if loop else None, "loop"))
            if end is not None]
    return min(ends) if ends else None


def end_of_use(request: CompletionRequest, text: str) -> tuple[int, StopReason] | None:
    """`suggestion_end` for a request's own rules."""
    return suggestion_end(text, request.stop_at_line_end, request.stop_at_dedent, request.stop_at_loop)


@dataclass(slots=True)
class CompletionResult:
    """The raw generation (special tokens removed) and what it cost."""

    text: str
    token_ids: list[int]
    stop_reason: StopReason
    prompt_tokens: int  # tokens in the prompt
    reused_tokens: int  # prompt tokens whose K/V came from the slot's cache
    prefill_tokens: int  # prompt tokens computed for this request
    generated_tokens: int
    latency_ms: float  # wall clock, tokenisation to last token
    extra: dict[str, float] = field(default_factory=dict)  # backend-specific figures
    # Each token's log-probability under the model and where its text ends in `text` (see
    # engine.generate.text_ends); None from backends that do not report them.
    token_logprobs: list[float] | None = None
    token_ends: list[int] | None = None
    # a beam search (`CompletionRequest.beam`): the line's total log-probability (the token that
    # ended it included), and the other lines it finished, likeliest first
    score: float | None = None
    other_lines: list[CompletionResult] = field(default_factory=list)  # a beam's other finished lines, likeliest first

    def logprobs_of(self, length: int) -> list[float] | None:
        """The log-probabilities of the tokens that wrote `text[:length]`; None when unknown."""
        if self.token_logprobs is None or self.token_ends is None:
            return None
        wrote, start = [], 0
        for logprob, end in zip(self.token_logprobs, self.token_ends):
            if start >= length:
                break
            if end > start:  # a token inside healing's re-spelled prefix wrote none of the text
                wrote.append(logprob)
            start = end
        return wrote

    def min_token_probability(self, length: int) -> float | None:
        """The lowest probability among the tokens that wrote `text[:length]`; None when unknown."""
        wrote = self.logprobs_of(length)
        return math.exp(min(wrote)) if wrote else None


@dataclass(frozen=True, slots=True)
class BackendInfo:
    """What `fim-lsp status` and `fim-lsp/status` report about a loaded backend."""

    backend: str  # "torch", "onnx", "openai", "reference"
    model: str  # checkpoint directory or hub id
    device: str
    dtype: str
    n_ctx: int  # the model's context window in tokens
    why: str = ""  # why this backend/dtype was chosen
    params: int = 0  # the model's parameter count; 0 when unknown (a remote server)


class Backend(Protocol):
    """A loaded model that completes prompts per document."""

    info: BackendInfo
    fim: FimTokens
    ranks_first_token: bool  # honours CompletionRequest.first_token_rank (alternative suggestions)
    searches_lines: bool  # honours CompletionRequest.beam (a beam search over one line)

    def count_tokens(self, text: str) -> int:
        """Number of tokens `text` encodes to (special tokens recognised)."""
        ...

    def complete(self, request: CompletionRequest, cancel: CancelToken | None = None) -> CompletionResult:
        """Generate for `request`; raise Cancelled if `cancel` fires. Thread-safe per doc_id."""
        ...

    def drop(self, doc_id: DocId) -> None:
        """Forget a document's cached state (the document was closed)."""
        ...

    def cache_stats(self) -> dict[str, int]:
        """Slots and bytes held, for status reports."""
        ...
