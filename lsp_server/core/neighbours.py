"""Snippets of other open documents that look like the code around the cursor.

Copilot's "neighbouring tabs": slide a window of lines over every other open document of the same
language, score each window by the Jaccard similarity of its identifier set with the identifiers
around the cursor, and keep the best few within a token budget. Each document version is indexed
once (its windows and, per word, the windows holding it: scoring a request then touches only the
windows that share a word with the cursor), and one request scans at most SCAN_BUDGET_CHARS of
other documents, the most recently edited first, however many are open. The snippets sit at the head of the
prompt, so changing them invalidates the whole KV cache: the previous choice is kept until a new
one is materially better. Pure: the token counter is passed in.
"""
from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lsp_server.core.context import CursorContext
from lsp_server.core.memo import ByteLRU, text_bytes

WINDOW_LINES = 20  # lines per candidate window
WINDOW_STEP = 10  # lines between window starts
MIN_SCORE = 0.05  # below this Jaccard similarity a window is not worth its tokens
MATERIAL_GAIN = 0.1  # a new best must beat the kept one by this much to replace it
MAX_SNIPPETS = 3
WINDOWS_MEMO_BYTES = 16 << 20  # cap on the memoised indexes of recent document versions
MAX_DOCUMENT_CHARS = 1_000_000  # larger documents are not scanned for snippets (a generated file
# or a data dump: its windows would not fit the memo and a rescan at every keystroke costs ~0.2 s a MB)
SCAN_BUDGET_CHARS = 1_000_000  # characters of other documents one request scans (newest first); the
# rest wait for a request where they are among the newest. Bounds a request's cost and the memo's size.

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Words every program has; they say nothing about which code is similar.
_STOP_WORDS = frozenset(
    "if else elif for while return def class import from as in is not and or true false none null "
    "self this let const var function int str new public private static void try except catch "
    "finally with pass break continue do end then fn pub use mut struct impl type".split()
)


@dataclass(frozen=True, slots=True)
class Snippet:
    """A piece of another open document, placed in the prompt under its path."""

    path: str
    text: str


def word_set(text: str) -> frozenset[str]:
    """The identifiers in `text`, lower-cased, without keywords."""
    return frozenset(w for w in (m.lower() for m in _WORD.findall(text)) if w not in _STOP_WORDS)


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """|a ∩ b| / |a ∪ b|; 0 for two empty sets."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def text_around_cursor(ctx: CursorContext, lines_before: int = 20, lines_after: int = 5) -> str:
    """The lines near the cursor that snippets are compared with."""
    before = ctx.prefix.rsplit("\n", lines_before + 1)[-lines_before - 1 :] if ctx.prefix else []
    after = ctx.suffix.split("\n", lines_after + 1)[: lines_after + 1] if ctx.suffix else []
    return "\n".join(before) + "\n".join(after)


# A window: (start, end) character offsets in its document and its distinct words (one string
# object per word of the document, so a memo entry holds each word once).
Window = tuple[int, int, tuple[str, ...]]
Windows = tuple[Window, ...]


def windows_bytes(text: str, windows: Windows) -> int:
    """Memory one memo entry holds: the document text, its windows and their words."""
    words = {id(w): w for _, _, ws in windows for w in ws}
    return (text_bytes(text) + sys.getsizeof(windows) + sum(map(text_bytes, words.values()))
            + sum(sys.getsizeof(w) + sys.getsizeof(w[0]) + sys.getsizeof(w[1]) + sys.getsizeof(w[2])
                  for w in windows))


@dataclass(frozen=True, slots=True)
class WindowIndex:
    """A document version's windows and, per word, the indexes of the windows holding it."""

    windows: Windows
    postings: dict[str, tuple[int, ...]]


def index_bytes(text: str, index: WindowIndex) -> int:
    """Memory one memo entry holds: `windows_bytes` plus the postings."""
    # a posting tuple holds pointers to one int object per window (shared by every word of it)
    postings = sys.getsizeof(index.postings) + sum(map(sys.getsizeof, index.postings.values()))
    postings += sys.getsizeof(0) * len(index.windows)
    return windows_bytes(text, index.windows) + postings


_INDEXES: ByteLRU[str, WindowIndex] = ByteLRU(WINDOWS_MEMO_BYTES, index_bytes)


def _index(text: str) -> WindowIndex:
    """A document's window index (memoised by text: built once per document version, since
    documents change rarely compared with how often the cursor moves)."""
    found = _INDEXES.get(text)
    if found is not None:
        return found
    windows = _scan_windows(text)
    postings: dict[str, list[int]] = {}
    for i, (_, _, words) in enumerate(windows):
        for w in words:
            postings.setdefault(w, []).append(i)
    found = WindowIndex(windows, {w: tuple(ids) for w, ids in postings.items()})
    _INDEXES.put(text, found)
    return found


def _windows(text: str) -> Windows:
    """Candidate windows of a document (from its memoised index)."""
    return _index(text).windows


def _scan_windows(text: str) -> Windows:
    lines = text.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    last_start = max(0, len(lines) - WINDOW_LINES)
    starts = list(range(0, last_start + 1, WINDOW_STEP))
    if starts[-1] != last_start:
        starts.append(last_start)
    shared: dict[str, str] = {}
    windows = []
    for start in starts:
        begin, end = offsets[start], offsets[min(start + WINDOW_LINES, len(lines))]
        chunk = text[begin:end]
        if chunk.strip():
            windows.append((begin, end, tuple(shared.setdefault(w, w) for w in word_set(chunk))))
    return tuple(windows)


def best_window(index: WindowIndex, around: frozenset[str]) -> tuple[float, int]:
    """(score, window number) of the window most like `around` (the first wins ties); (0.0, -1)
    when no window shares a word. Touches only the windows that hold one of `around`'s words."""
    common: Counter[int] = Counter()
    for w in around:
        ids = index.postings.get(w)
        if ids:
            common.update(ids)
    best, best_id = 0.0, -1
    for i, shared in common.items():
        words = index.windows[i][2]
        score = shared / (len(words) + len(around) - shared)
        if score > best or (score == best and i < best_id):
            best, best_id = score, i
    return best, best_id


def window_score(words: tuple[str, ...], around: frozenset[str]) -> float:
    """`jaccard(set(words), around)` for a window's distinct `words`."""
    common = sum(1 for w in words if w in around)
    union = len(words) + len(around) - common
    return common / union if union else 0.0


def _fit(snippet_text: str, path: str, budget: int, count_tokens: Callable[[str], int]) -> str:
    """`snippet_text` cut to whole lines so that it and its path header fit in `budget` tokens."""
    lines = snippet_text.splitlines(keepends=True)
    while lines and count_tokens(path + "\n" + "".join(lines)) > budget:
        lines.pop()
    return "".join(lines)


def _score(words: frozenset[str], snippets: Sequence[Snippet]) -> float:
    return max((jaccard(words, word_set(s.text)) for s in snippets), default=0.0)


def select_snippets(around_cursor: str, others: Sequence[tuple[str, str]], budget_tokens: int,
                    count_tokens: Callable[[str], int], previous: Sequence[Snippet] = (),
                    scan_budget_chars: int = SCAN_BUDGET_CHARS,
                    clean: Callable[[str], str] = lambda s: s) -> list[Snippet]:
    """The best windows of `others` ((path, text) of open documents of the same language) for the
    code `around_cursor`, at most one per document, within `budget_tokens` tokens in all.
    Documents over MAX_DOCUMENT_CHARS are left out; `others` are scanned in order until
    `scan_budget_chars` characters have been (a document over what is left is skipped). A chosen
    window's path and text go through `clean` (the caller's scrub of what the tokenizer cannot take).

    Returns `previous` unchanged while every previous snippet still reads the same in its
    document, still scores at least MIN_SCORE, and the new best does not beat it by MATERIAL_GAIN.
    """
    if budget_tokens < 0:
        raise ValueError(f"budget_tokens must be >= 0, got {budget_tokens}")
    words = word_set(around_cursor)
    candidates: list[tuple[float, str, str]] = []  # (score, path, window text)
    left_to_scan = scan_budget_chars
    for path, text in others:
        if len(text) > min(MAX_DOCUMENT_CHARS, left_to_scan) or not text.strip():
            continue
        left_to_scan -= len(text)
        index = _index(text)
        best, i = best_window(index, words)
        if best >= MIN_SCORE:
            begin, end, _ = index.windows[i]
            candidates.append((best, clean(path), clean(text[begin:end])))
    candidates.sort(key=lambda c: (-c[0], c[1]))
    if previous and _still_good(previous, others, words, budget_tokens, count_tokens):
        new_best = candidates[0][0] if candidates else 0.0
        if new_best < _score(words, previous) + MATERIAL_GAIN:
            return list(previous)
    chosen: list[Snippet] = []
    left = budget_tokens
    for _, path, chunk in candidates[:MAX_SNIPPETS]:
        text = _fit(chunk, path, left, count_tokens)
        if text.strip():
            chosen.append(Snippet(path=path, text=text))
            left -= count_tokens(path + "\n" + text)
    return chosen


def _still_good(previous: Sequence[Snippet], others: Sequence[tuple[str, str]], words: frozenset[str],
                budget_tokens: int, count_tokens: Callable[[str], int]) -> bool:
    """Every previous snippet is still in its document verbatim, similar enough, within budget."""
    texts = dict(others)
    if any(s.text not in texts.get(s.path, "") for s in previous):
        return False
    if any(jaccard(words, word_set(s.text)) < MIN_SCORE for s in previous):
        return False
    return sum(count_tokens(s.path + "\n" + s.text) for s in previous) <= budget_tokens
