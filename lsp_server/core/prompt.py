"""Fill-in-the-middle prompts that fit the model's window and keep its KV cache warm.

A prompt is the text before the cursor (the prefix) and after it (the suffix), wrapped in the
family's FIM tokens, optionally headed by the file name and snippets of other open documents.
StarCoder was trained on both orders; we default to SPM,

    {head}<fim_prefix><fim_suffix>{suffix}<fim_middle>{prefix}

because then the prefix comes last: typing at the cursor only appends to the prompt text, so the
engine reuses every cached token but the last few. That holds only if the window does not slide on
every keystroke, so the prefix window starts on a line that is a multiple of `chunk_lines` (fewer
lines in a small window) and moves a whole chunk at a time when the budget runs out; the suffix
window is cut by chunks counted
from the cursor, which typing before it does not change.

Token counts come from the model's tokenizer, passed in as `count_tokens`. Counting is per chunk;
wrap the tokenizer once with `memoize_counts` so the unchanged chunks cost a dictionary look-up
and a keystroke costs about one tokenizer call. Pure: no tokenizer import here.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from engine.fim import FimTokens, fim_prompt
from lsp_server.core.context import CursorContext
from lsp_server.core.memo import ByteLRU, text_bytes
from lsp_server.core.languages import language_of, line_comment

if TYPE_CHECKING:
    from lsp_server.core.neighbours import Snippet

FimMode = Literal["auto", "spm", "psm"]
PromptMode = Literal["spm", "psm", "l2r"]
CountTokens = Callable[[str], int]

NO_FIM_NOTE = "model has no FIM tokens: left-to-right completion"
CHAR_CUT = 64  # a line longer than the whole budget is cut at multiples of this many code points
# A small window cannot afford 32-line chunks: a jump wastes up to a chunk of budget. Chunks are
# capped so that about CHUNKS_PER_WINDOW fit, guessing LINE_TOKENS tokens a line.
CHUNKS_PER_WINDOW = 8
# A suffix this many characters per token of its budget or shorter is counted whole first; a
# longer one (the rest of a 5,000-line file) only chunk by chunk, as far as the window reaches.
SHORT_TEXT_CHARS_PER_TOKEN = 4
LINE_TOKENS = 8


class PromptDoesNotFit(ValueError):
    """The model's window leaves no room for a prompt (n_ctx too small for the generation budget)."""


@dataclass(frozen=True, slots=True)
class PromptConfig:
    """How prompts are shaped; one per server, parsed at start-up."""

    fim_mode: FimMode = "auto"
    """auto = SPM when the tokenizer has FIM tokens (both families were trained with it); spm; psm."""
    prefix_suffix_ratio: float = 3.0
    """Share of the window given to the prefix over the suffix (3.0 = 3:1)."""
    chunk_lines: int = 32
    """The prefix window's start moves in whole chunks of this many lines (fewer in small windows)."""
    max_new_tokens: int = 64
    """Generation budget reserved from the model's window."""
    include_filename: bool = True
    """Head the prompt with StarCoder's `<filename>path\\n` when the family has that token."""
    include_repo_name: bool = True
    """Head it with `<reponame>name` (the workspace folder's name) when the tokenizer has that token."""
    neighbours: bool = True
    """Add snippets of other open documents of the same language."""
    neighbour_tokens: int = 256
    """Token budget for those snippets."""

    def __post_init__(self) -> None:
        if self.fim_mode not in ("auto", "spm", "psm"):
            raise ValueError(f"fim_mode must be auto, spm or psm, got {self.fim_mode!r}")
        if not self.prefix_suffix_ratio > 0:
            raise ValueError(f"prefix_suffix_ratio must be > 0, got {self.prefix_suffix_ratio}")
        if self.chunk_lines < 1:
            raise ValueError(f"chunk_lines must be >= 1, got {self.chunk_lines}")
        if self.max_new_tokens < 0 or self.neighbour_tokens < 0:
            raise ValueError("max_new_tokens and neighbour_tokens must be >= 0")


@dataclass(frozen=True, slots=True)
class Prompt:
    """The exact text sent to the model and how it was cut."""

    text: str  # exact prompt, special tokens spelled out
    mode: PromptMode
    prefix: str  # the windowed prefix actually used
    suffix: str  # the windowed suffix actually used ("" in l2r mode)
    note: str = ""  # why the prompt differs from what was configured
    prefix_start_line: int = 0  # document line where the prefix window starts
    chunk_lines: int = 0  # the chunk size the prefix window moved by
    snippets: int = 0  # snippets of other documents included


COUNT_MEMO_BYTES = 4 << 20  # token-count memo cap: the texts it keys on, in bytes
ENTRY_OVERHEAD = 128  # bytes of bookkeeping per memo entry (the ordered-dict node, the count)


class TokenCounter:
    """A tokenizer's count function memoised by text (least recently used entries evicted)."""

    __slots__ = ("_count", "_memo", "calls")

    def __init__(self, count_tokens: CountTokens, max_bytes: int = COUNT_MEMO_BYTES) -> None:
        self._count = count_tokens
        self._memo: ByteLRU[str, int] = ByteLRU(max_bytes, lambda text, _: text_bytes(text) + ENTRY_OVERHEAD)
        self.calls = 0  # calls that reached the tokenizer

    @property
    def nbytes(self) -> int:
        """Memory the memo holds (bounded by its cap)."""
        return self._memo.nbytes

    def __call__(self, text: str) -> int:
        found = self._memo.get(text)
        if found is not None:
            return found
        self.calls += 1
        found = self._count(text)
        self._memo.put(text, found)
        return found


def memoize_counts(count_tokens: CountTokens, max_bytes: int = COUNT_MEMO_BYTES) -> TokenCounter:
    """Wrap a tokenizer's count function once per model; already-wrapped counters pass through."""
    return count_tokens if isinstance(count_tokens, TokenCounter) else TokenCounter(count_tokens, max_bytes)


def _line_starts_backward(text: str):
    """Offsets where the lines of `text` start, last line first."""
    has_cr = "\r" in text
    start = max(text.rfind("\n"), text.rfind("\r") if has_cr else -1) + 1
    yield start
    while start > 0:
        brk = start - 1
        if has_cr and text[brk] == "\n" and brk > 0 and text[brk - 1] == "\r":
            brk -= 1
        start = max(text.rfind("\n", 0, brk), text.rfind("\r", 0, brk) if has_cr else -1) + 1
        yield start


def _line_ends_forward(text: str):
    """Offsets just past each line's break in `text`, first line first (the last is len(text))."""
    pos, n = 0, len(text)
    has_cr = "\r" in text
    while pos < n:
        nl = text.find("\n", pos)
        cr = text.find("\r", pos, nl if nl >= 0 else n) if has_cr else -1
        brk = cr if cr >= 0 else nl
        if brk < 0:
            yield n
            return
        pos = brk + (2 if text.startswith("\r\n", brk) else 1)
        yield pos


def _cut_to_fit(text: str, budget: int, count: CountTokens, keep_end: bool) -> str:
    """A piece of one over-long line within `budget`, cut at a multiple of CHAR_CUT code points
    from the line's start, so the cut stays put while the other end grows."""
    if count(text) <= budget:
        return text
    units = -(-len(text) // CHAR_CUT)
    if keep_end:  # smallest k with text[k*CHAR_CUT:] fitting; k = units always fits (empty)
        lo, hi = 1, units
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if count(text[mid * CHAR_CUT :]) <= budget else (mid + 1, hi)
        return text[lo * CHAR_CUT :]
    lo, hi = 0, units - 1  # largest k with text[:k*CHAR_CUT] fitting; k = 0 always fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if count(text[: mid * CHAR_CUT]) <= budget else (lo, mid - 1)
    return text[: lo * CHAR_CUT]


class _LineStarts:
    """Start offsets of the lines of a text, last line first, found only as far back as asked."""

    __slots__ = ("_found", "_walk")

    def __init__(self, text: str) -> None:
        self._found: list[int] = []
        self._walk = _line_starts_backward(text)

    def back(self, n: int) -> int | None:
        """The start of the line `n` lines above the last one; None past the first line."""
        while len(self._found) <= n:
            nxt = next(self._walk, None)
            if nxt is None:
                return None
            self._found.append(nxt)
        return self._found[n]


def chunk_lines_for(budget: int, chunk_lines: int) -> int:
    """The chunk size for a prefix budget: `chunk_lines`, or fewer when the budget is small."""
    return max(1, min(chunk_lines, budget // (CHUNKS_PER_WINDOW * LINE_TOKENS)))


def window_prefix(prefix: str, cursor_line: int, budget: int, chunk_lines: int,
                  count: CountTokens) -> tuple[str, int]:
    """The longest tail of `prefix` within `budget` tokens that starts on a chunk boundary.

    Chunk boundaries are document lines that are multiples of the chunk size, so the window start
    stays put while the user types and jumps a whole chunk when the budget runs out. When even the
    cursor's own chunk does not fit, the chunk is halved down to single lines, and a cursor line
    longer than the budget is cut at CHAR_CUT code points. Returns (window, first line number).
    Each chunk boundary costs one token of margin: tokens can merge across a line break.
    """
    if budget <= 0:
        return "", cursor_line
    starts = _LineStarts(prefix)
    chunk = chunk_lines
    while True:
        best = _fit_chunks(prefix, cursor_line, chunk, budget, count, starts)
        if best is not None:
            return prefix[best[0] :], best[1]
        if chunk == 1:
            break
        chunk = max(1, chunk // 2)
    return _cut_to_fit(prefix[starts.back(0) :], budget, count, keep_end=True), cursor_line


def _fit_chunks(prefix: str, cursor_line: int, chunk: int, budget: int, count: CountTokens,
                starts: _LineStarts) -> tuple[int, int] | None:
    """(offset, line) of the earliest chunk boundary whose window fits, or None if none does."""
    boundary = (cursor_line // chunk) * chunk
    end = len(prefix)
    used = 0
    best: tuple[int, int] | None = None
    while boundary >= 0:
        offset = starts.back(cursor_line - boundary)
        if offset is None:
            break
        used += count(prefix[offset:end]) + (1 if best is not None else 0)
        if used > budget:
            break
        best = (offset, boundary)
        end = offset
        boundary -= chunk
    return best


def window_suffix(suffix: str, budget: int, chunk_lines: int, count: CountTokens) -> str:
    """The longest head of `suffix` within `budget` tokens, cut on a line boundary.

    Whole chunks of lines counted from the cursor first, then single lines of the next chunk; a
    first line longer than the budget is cut at CHAR_CUT code points. Depends only on the suffix,
    which typing at the cursor leaves unchanged.
    """
    if budget <= 0 or not suffix:
        return ""
    if len(suffix) <= budget * SHORT_TEXT_CHARS_PER_TOKEN and count(suffix) <= budget:
        return suffix
    ends: list[int] = []  # line ends, found only as far as the window reaches
    walk = _line_ends_forward(suffix)
    used, taken = 0, 0  # tokens used, lines taken
    for step in (chunk_lines, 1):
        while True:
            while len(ends) < taken + step and (end := next(walk, None)) is not None:
                ends.append(end)
            upto = min(taken + step, len(ends))
            if upto == taken:
                break
            start = ends[taken - 1] if taken else 0
            cost = count(suffix[start : ends[upto - 1]]) + (1 if taken else 0)
            if used + cost > budget:
                break
            used += cost
            taken = upto
    if taken:
        return suffix[: ends[taken - 1]]
    return _cut_to_fit(suffix[: ends[0]], budget, count, keep_end=False)


def render_head(fim: FimTokens, config: PromptConfig, path: str | None, snippets: Sequence[Snippet],
                repo: str | None = None) -> str:
    """The text before the FIM section: snippets of other documents, then the file's metadata.

    With a `<filename>` token each snippet is a document of its own, as StarCoder saw files in
    training (`<filename>path\\n...<|endoftext|>`); without one, snippets are line comments headed
    by their path, as Copilot writes its neighbouring tabs. StarCoder's files were headed by
    `<reponame>name<filename>path\\n` (each part sometimes left out): the repository name
    (`repo`, the workspace folder's name) goes just before the file name. It changes only when
    the workspace does, so the prompt's tokens stay the same from one keystroke to the next.
    """
    parts: list[str] = []
    if fim.filename is not None:
        for s in snippets:
            body = s.text if s.text.endswith("\n") else s.text + "\n"
            parts.append(f"{fim.filename}{s.path}\n{body}{fim.eod}")
        named = config.include_filename and path
        if fim.reponame is not None and config.include_repo_name and repo:
            parts.append(f"{fim.reponame}{repo}" + ("" if named else "\n"))
        if named:
            parts.append(f"{fim.filename}{path}\n")
    else:
        for s in snippets:
            mark = line_comment(language_of(s.path) or language_of(path or "") or "")
            lines = s.text.splitlines()
            body = "".join(f"{mark} {line}".rstrip() + "\n" for line in lines)
            parts.append(f"{mark} Compare this snippet from {s.path}:\n{body}")
    return "".join(parts)


def choose_mode(fim: FimTokens, config: PromptConfig) -> tuple[PromptMode, str]:
    """The prompt order for this tokenizer and configuration, and a note when it differs."""
    if not fim.has_fim:
        return "l2r", NO_FIM_NOTE
    return ("psm" if config.fim_mode == "psm" else "spm"), ""


def _room(n_ctx: int, config: PromptConfig, mode: PromptMode, fim: FimTokens, head: str, count: CountTokens) -> int:
    """Tokens left for the prefix and suffix windows once the generation, head and FIM markers
    are paid for. Special tokens split text, so the pieces' counts add up exactly, except where
    the head runs straight into the prefix (left-to-right): one token of margin there."""
    if mode == "l2r":
        fixed = count(head) + 1 if head else 0
    else:
        fixed = (count(head) if head else 0) + count(f"{fim.prefix}{fim.suffix}{fim.middle}")
    return n_ctx - config.max_new_tokens - fixed


def build_prompt(ctx: CursorContext, fim: FimTokens, count_tokens: CountTokens, n_ctx: int,
                 config: PromptConfig, path: str | None = None, snippets: Sequence[Snippet] = (),
                 repo: str | None = None) -> Prompt:
    """The prompt for a cursor: head, windowed prefix and suffix, in the family's FIM template.

    The window is `n_ctx` minus the generation budget minus the head and FIM tokens, split
    prefix:suffix by `config.prefix_suffix_ratio`; suffix tokens left unused go to the prefix.
    Snippets that would take more than `config.neighbour_tokens` are dropped from the end.
    """
    if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx <= 0:
        raise ValueError(f"n_ctx must be a positive int (the model's window in tokens), got {n_ctx!r}")
    count = memoize_counts(count_tokens)
    mode, note = choose_mode(fim, config)
    kept = list(snippets) if config.neighbours else []
    head = render_head(fim, config, path, kept, repo)
    bare_head = render_head(fim, config, path, [], repo)
    while kept and count(head) - count(bare_head) > config.neighbour_tokens:
        kept.pop()
        head = render_head(fim, config, path, kept, repo)
    available = _room(n_ctx, config, mode, fim, head, count)
    if available <= 0 and kept:
        kept, head = [], bare_head
        available = _room(n_ctx, config, mode, fim, head, count)
    if available <= 0:
        raise PromptDoesNotFit(
            f"n_ctx={n_ctx} leaves no room for a prompt after max_new_tokens={config.max_new_tokens} "
            f"and the FIM/header tokens; lower max_new_tokens or use a model with a larger window"
        )
    if mode == "l2r":
        suffix = ""
    else:
        suffix_budget = int(available / (config.prefix_suffix_ratio + 1))
        suffix = window_suffix(ctx.suffix, suffix_budget, config.chunk_lines, count)
        available -= count(suffix) if suffix else 0
    chunk = chunk_lines_for(available, config.chunk_lines)
    prefix, start_line = window_prefix(ctx.prefix, ctx.line, available, chunk, count)
    text = f"{head}{prefix}" if mode == "l2r" else fim_prompt(fim, mode, prefix, suffix, head)
    return Prompt(text=text, mode=mode, prefix=prefix, suffix=suffix, note=note,
                  prefix_start_line=start_line, chunk_lines=chunk, snippets=len(kept))
