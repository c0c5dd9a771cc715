"""A model's raw generation made into the suggestion the editor shows.

The model writes until a stop token or its budget; what it wrote often runs past the useful part:
it re-types the code after the cursor, closes brackets the editor already closed, leaves the block
it was asked to fill, repeats a line forever, or ends in spaces. The rules, in order:

1. cut at stop tokens and stop strings, and before a control character other than tab and line
   breaks (editors draw them as symbols, or refuse to show the text; code beside a cursor does not
   hold them) or a U+FFFD (bytes decoded that are not a whole character);
2. one line or a block: mid-line is one line; at the end of a line that opens a block, or on an
   empty line under one, it is the block (`multiline` = never/auto/always);
3. a block ends where the indentation leaves its scope, where it meets the first line after the
   cursor (the suffix), at a line that repeats the one before, or at `max_lines`; on a line that
   holds only indentation, a suggestion starting deeper than the code allows there (the line
   above's depth, one level more under an opener) is moved back to it, its lines alike, and one
   whose first line repeats the line above, or assigns again what that line assigned without
   reading it (leaving it dead code), is no suggestion;
4. text that repeats the rest of the cursor's line is removed, and closing characters the
   suggestion supplies (`)`, `]`, `"`) replace those already after the cursor;
5. brackets stay balanced: a closer that matches nothing open ends the suggestion, and a one-line
   suggestion inside a line closes what it opened;
6. trailing whitespace is trimmed, and an empty suggestion is no suggestion.

Pure: strings in, a Suggestion out. Bracket and string tracking is lexical (quotes end at a line
break, comments are not recognised): good enough for the line or block around a cursor.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from engine.api import indent_width
from lsp_server.core.context import CursorContext

MultiLine = Literal["never", "auto", "always"]
Case = Literal["mid", "line_start", "open_line", "line_end"]

OPEN_TO_CLOSE = {"(": ")", "[": "]", "{": "}"}
CLOSE_TO_OPEN = {v: k for k, v in OPEN_TO_CLOSE.items()}
QUOTES = "\"'`"
_PAIRED = ")]}([{" + QUOTES
_BLOCK_OPENER = re.compile(r"(?:[:{(\[]|=>|\b(?:do|then|else|begin))$")
_CLOSERS_ONLY = re.compile(r"^[\s)\]}>;,]+$")
_ASSIGNMENT = re.compile(r"^([A-Za-z_][\w.]*)\s*=(?!=)\s*(.+)$")  # `target = value`, one plain name or attribute
# After \r and \r\n became \n. U+FFFD is what decoding gives for bytes that are not a whole UTF-8
# character: a budget that ended inside one, or invalid bytes; inserted, it would corrupt the buffer.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ufffd]")
PREFIX_SCAN_CHARS = 4000  # how far back the cursor's open brackets are looked for
NEXT_LINE_SCAN_CHARS = 8000  # how far ahead the first non-blank line after the cursor is looked for


@dataclass(frozen=True, slots=True)
class PostprocessConfig:
    """How raw generations become suggestions; one per server."""

    multiline: MultiLine = "auto"
    """never: one line; auto: a block after a block opener, else one line; always: a block."""
    max_lines: int = 16
    """Most lines a suggestion may have."""
    stop_strings: tuple[str, ...] = ()
    """Texts that end a generation (e.g. a language's `\\ndef `), beyond the model's stop tokens."""

    def __post_init__(self) -> None:
        if self.multiline not in ("never", "auto", "always"):
            raise ValueError(f"multiline must be never, auto or always, got {self.multiline!r}")
        if self.max_lines < 1:
            raise ValueError(f"max_lines must be >= 1, got {self.max_lines}")


@dataclass(frozen=True, slots=True)
class Suggestion:
    """What the editor inserts at the cursor."""

    text: str  # inserted at the cursor, in the document's line breaks
    replace_chars: int = 0  # chars after the cursor on its line that the text replaces (`)`, `]`, `"`)


@dataclass(frozen=True, slots=True)
class ShownSuggestion:
    """A suggestion the editor is showing, and the document around the cursor when it was made."""

    prefix: str
    suffix: str
    suggestion: Suggestion


def opens_block(line: str) -> bool:
    """True when a line ends with a block opener (`:`, `{`, `(`, `[`, `=>`, `do`, `then`...)."""
    return bool(_BLOCK_OPENER.search(line.rstrip()))


def cut_at_stops(raw: str, stops: Sequence[str]) -> str:
    """`raw` up to the earliest occurrence of any non-empty stop."""
    end = len(raw)
    for stop in stops:
        if stop:
            found = raw.find(stop, 0, end)
            if found >= 0:
                end = found
    return raw[:end]


def before_control(text: str) -> str:
    """`text` up to its first control character other than tab and newline, or U+FFFD."""
    found = _CONTROL.search(text)
    return text if found is None else text[:found.start()]


def _has_word(text: str) -> bool:
    return any(c.isalnum() for c in text)


def _same_line(a: str, b: str) -> bool:
    """Two lines read the same: ignoring indentation when they hold words, exactly otherwise
    (`}` closing an inner block is not the `}` of the outer one)."""
    if _has_word(b):
        return a.strip() == b.strip()
    return a.rstrip() == b.rstrip() and bool(b.strip())


def _classify(ctx: CursorContext) -> Case:
    before, after = ctx.line_prefix.strip(), ctx.line_suffix.strip()
    if before and after:
        return "mid"
    if after:
        return "line_start"
    return "line_end" if before else "open_line"


def _opener(ctx: CursorContext, case: Case) -> str | None:
    """The line that opens the block a suggestion at `ctx` would fill, or None."""
    if case == "open_line" and opens_block(_previous_line(ctx)):
        return _previous_line(ctx)
    if case == "line_end" and opens_block(ctx.line_prefix):
        return ctx.line_prefix
    return None


def block_floor(ctx: CursorContext, config: PostprocessConfig) -> int | None:
    """For a block suggestion under an opener: the column a later line must be indented past to
    stay in the block (`CompletionRequest.stop_at_dedent`); None when not known before generating."""
    if not takes_block(ctx, config):
        return None
    opener = _opener(ctx, _classify(ctx))
    return None if opener is None else indent_width(opener) + 1


def takes_block(ctx: CursorContext, config: PostprocessConfig) -> bool:
    """Whether a suggestion at `ctx` may span lines; else it is one line, and decoding can end at
    the first line break after text (`CompletionRequest.stop_at_line_end`)."""
    return config.multiline == "always" or (config.multiline == "auto" and _opener(ctx, _classify(ctx)) is not None)


def _previous_line(ctx: CursorContext) -> str:
    """The last non-blank line above the cursor's line ("" when none)."""
    above = ctx.prefix[: len(ctx.prefix) - len(ctx.line_prefix)].rstrip()
    return above[max(above.rfind("\n"), above.rfind("\r")) + 1 :]


def _next_line(ctx: CursorContext) -> str:
    """The first non-blank line below the cursor's line ("" when none)."""
    below = ctx.suffix[len(ctx.line_suffix) : len(ctx.line_suffix) + NEXT_LINE_SCAN_CHARS]
    for line in below.splitlines():
        if line.strip():
            return line
    return ""


def _take_block(lines: list[str], ctx: CursorContext, case: Case, opener: str | None, anchor: str,
                max_lines: int) -> list[str]:
    """The lines of a block suggestion: stop where indentation leaves the scope, at the line after
    the cursor (`anchor`), at a repeated line, or at `max_lines`."""
    first_full = ctx.line_prefix + lines[0]  # the cursor's line as the block starts it
    if case != "mid" and case != "line_end" and anchor and _same_line(first_full, anchor):
        return []
    if case == "open_line" and _repeats_or_overwrites_line_above(ctx, lines[0]):
        return []
    if opener is not None:
        floor = indent_width(opener)  # the block's lines sit deeper than its opener
        scope = floor + 1
    else:
        floor = -1
        starter = first_full if first_full.strip() else next((x for x in lines[1:] if x.strip()), "")
        scope = indent_width(starter if case != "line_end" else ctx.line_prefix)
    kept = [lines[0]]
    previous = first_full if first_full.strip() else _previous_line(ctx)
    for line in lines[1:]:
        if len(kept) >= max_lines:
            break
        if not line.strip():
            kept.append(line)
            continue
        if anchor and _same_line(line, anchor):
            break
        if indent_width(line) < scope:
            if indent_width(line) == floor and _CLOSERS_ONLY.match(line):
                kept.append(line)  # the closing bracket of the block the opener began
            break
        if _has_word(line) and line.strip() == previous.strip():
            break  # a model stuck repeating itself
        kept.append(line)
        previous = line
    return kept


def _take_line(lines: list[str], ctx: CursorContext, case: Case, config: PostprocessConfig, anchor: str) -> list[str]:
    """The lines of a one-line suggestion (plus the line break it needs, as ["", ...] pieces)."""
    first = lines[0]
    if case == "line_end" and not first.strip() and len(lines) > 1 and config.multiline == "auto":
        return ["", lines[1]]  # the model went on to the next line: suggest that line
    if case in ("open_line", "line_start") and anchor and _same_line(ctx.line_prefix + first, anchor):
        return []
    if case == "open_line" and _repeats_or_overwrites_line_above(ctx, first):
        return []
    return [first]


INDENT_STEP = 4  # columns one indentation level may add under an opener (2-space code fits in it)


def _within_indentation(lines: list[str], ctx: CursorContext, outer: list[str], quote: str | None) -> list[str]:
    """On a line holding only indentation: `lines` moved back left when their first line would start
    deeper than the code allows (the line above's depth, `INDENT_STEP` more under an opener, or the
    cursor's own column if deeper), by the spaces in excess, and every later line by as many as it
    has of them. Inside parentheses or brackets (`outer`: those the prefix left open; a continuation
    line aligns anywhere) or a string (`quote`) nothing moves."""
    if quote is not None or (outer and outer[-1] != "{"):
        return lines
    first = lines[0]
    lead = len(first) - len(first.lstrip(" "))
    if not first.strip() or not lead:
        return lines
    above = _previous_line(ctx)
    deepest = max(indent_width(above) + (INDENT_STEP if opens_block(above) else 0), indent_width(ctx.line_prefix))
    excess = min(lead, indent_width(ctx.line_prefix + first) - deepest)
    if excess <= 0:
        return lines
    return [line[min(excess, len(line) - len(line.lstrip(" "))):] for line in lines]


def _repeats_or_overwrites_line_above(ctx: CursorContext, first: str) -> bool:
    """True when the suggestion's first line on an empty line repeats the line above it, or assigns
    again what the line above assigned without reading it (`self.y = z` under `self.y = y`: the line
    above would be dead code)."""
    above = _previous_line(ctx)
    if _has_word(first) and first.strip() == above.strip():
        return True
    mine, theirs = _ASSIGNMENT.match(first.strip()), _ASSIGNMENT.match(above.strip())
    if mine is None or theirs is None or mine.group(1) != theirs.group(1):
        return False
    return re.search(rf"(?<![\w.]){re.escape(mine.group(1))}(?!\w)", mine.group(2)) is None


def _lex(text: str, quote: str | None):
    """(index, char, kind) for the characters that matter to bracket balance: kind is "code" for
    a character outside strings, "open"/"close" for a quote that starts/ends a string, "break" for
    a line break (which ends any string). `quote` is the string `text` starts inside, if any."""
    escaped = False
    for i, c in enumerate(text):
        if c in "\r\n":
            quote, escaped = None, False
            yield i, c, "break"
        elif quote is not None:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == quote:
                quote = None
                yield i, c, "close"
        elif c in QUOTES:
            quote = c
            yield i, c, "open"
        else:
            yield i, c, "code"


def _prefix_brackets(prefix: str) -> tuple[list[str], str | None]:
    """The brackets still open at the end of `prefix` and the quote the cursor is inside, if any."""
    tail = prefix[-PREFIX_SCAN_CHARS:]
    if len(tail) < len(prefix):
        tail = tail[tail.find("\n") + 1 :]  # start on a line boundary
    stack: list[str] = []
    quote: str | None = None
    for _, c, kind in _lex(tail, None):
        if kind != "code":
            quote = c if kind == "open" else None
        elif c in OPEN_TO_CLOSE:
            stack.append(c)
        elif c in CLOSE_TO_OPEN and CLOSE_TO_OPEN[c] in stack:
            while stack.pop() != CLOSE_TO_OPEN[c]:
                pass
    return stack, quote


@dataclass(slots=True)
class _Balance:
    text: str  # the suggestion, cut before its first unmatched closer
    closers: str  # characters that close what the prefix opened (brackets, the cursor's string)
    unclosed: list[str]  # brackets the suggestion opened and left open


def _balance(text: str, outer: list[str], quote: str | None) -> _Balance:
    """Walk the suggestion's brackets against those the prefix left open."""
    outer = list(outer)
    own: list[str] = []
    closers: list[str] = []
    in_outer_string = quote is not None  # a string begun before the cursor
    for i, c, kind in _lex(text, quote):
        if kind == "close" and in_outer_string:
            closers.append(c)
        if kind != "code":
            in_outer_string = False
            continue
        if c in OPEN_TO_CLOSE:
            own.append(c)
        elif c in CLOSE_TO_OPEN:
            want = CLOSE_TO_OPEN[c]
            if own and own[-1] == want:
                own.pop()
            elif not own and outer and outer[-1] == want:
                outer.pop()
                closers.append(c)
            else:
                return _Balance(text[:i], "".join(closers), own)
    return _Balance(text, "".join(closers), own)


def _common_prefix_len(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _without_repeated_next_line(text: str, line_prefix: str, follows: str, last_complete: bool) -> str:
    """`text` cut before its first whole line that re-types `follows`, the line the suggestion
    runs into. The first line counts with `line_prefix` before it, as the editor will show it;
    the last line counts only when `last_complete` (nothing else follows it on its line)."""
    if not _has_word(follows):
        return text
    lines = text.split("\n")
    for i, line in enumerate(lines if last_complete else lines[:-1]):
        if _same_line(line_prefix + line if i == 0 else line, follows):
            return "\n".join(lines[:i]).rstrip()
    return text


def _without_retyped_rest(text: str, rest_of_line: str) -> str:
    """`text` without endings that repeat the rest of the cursor's line (`x + 1` before ` + 1`).
    Closing brackets and quotes are left to replace_chars and bracket balance."""
    tails = [t for t in dict.fromkeys((rest_of_line.rstrip(), rest_of_line.strip()))
             if t and (_has_word(t) or not any(c in _PAIRED for c in t))]
    body = text.rstrip()
    while any(body.endswith(t) for t in tails):
        tail = next(t for t in tails if body.endswith(t))
        text = body[: len(body) - len(tail)]
        body = text.rstrip()
    return text


def postprocess(raw: str, ctx: CursorContext, config: PostprocessConfig,
                stop_tokens: Sequence[str] = ()) -> Suggestion | None:
    """The suggestion to show for a raw generation at `ctx`, or None when nothing is worth showing.

    `stop_tokens` are the model's special tokens (FimTokens.stop_tokens()); the config's stop
    strings are cut too. The returned text uses the document's line breaks."""
    text = cut_at_stops(raw.replace("\r\n", "\n").replace("\r", "\n"), (*stop_tokens, *config.stop_strings))
    text = before_control(text)
    if not text.strip():
        return None
    case = _classify(ctx)
    lp, ls = ctx.line_prefix, ctx.line_suffix
    opener = _opener(ctx, case)
    multi = takes_block(ctx, config)
    below = _next_line(ctx)
    anchor = (lp + ls) if case == "line_start" else below
    lines = text.split("\n")
    outer, quote = _prefix_brackets(ctx.prefix)
    if case == "open_line":
        lines = _within_indentation(lines, ctx, outer, quote)
    if multi:
        kept = _take_block(lines, ctx, case, opener, anchor, config.max_lines)
    else:
        kept = _take_line(lines, ctx, case, config, anchor)
    kept = [line.rstrip() for line in kept[:-1]] + kept[-1:]
    while len(kept) > 1 and not kept[-1].strip():
        kept.pop()
    terminated = case == "line_start" and len(kept) < len(lines)  # whole lines, then the old one
    text = "\n".join(kept)
    balance = _balance(text, outer, quote)
    text = balance.text
    if case == "mid" and "\n" not in text and balance.unclosed:
        text += "".join(OPEN_TO_CLOSE[c] for c in reversed(balance.unclosed))
    joins_line = bool(ls.strip()) and not terminated  # the last line runs into the rest of the line
    replace_chars = _common_prefix_len(balance.closers, ls) if joins_line else 0
    rest_of_line = ls[replace_chars:]
    if not joins_line or not rest_of_line.strip():
        text = text.rstrip()
    if terminated:
        text = _without_repeated_next_line(text, lp, lp + ls, last_complete=True)
        text = text + "\n" + lp if text.strip() else ""
    elif joins_line and rest_of_line.strip():
        text = _without_repeated_next_line(text, lp, rest_of_line, last_complete=False)
        text = _without_retyped_rest(text, rest_of_line)
    else:
        text = _without_repeated_next_line(text, lp, below, last_complete=True)
    if not text.strip() or text == ls[:replace_chars]:
        return None  # nothing, or only the closers already after the cursor
    if ctx.newline != "\n":
        text = text.replace("\n", ctx.newline)
    return Suggestion(text=text, replace_chars=replace_chars)


def reuse_suggestion(shown: ShownSuggestion, ctx: CursorContext) -> Suggestion | None:
    """The rest of a shown suggestion after the user typed its first characters, the suggestion
    itself when nothing changed (an editor asking again, or a second kind of request for the same
    keystroke, gets the same answer at no cost); None when they typed something else, deleted,
    moved, or typed it all.

    An editor that auto-closes brackets inserts the closer after the cursor as the user types the
    opener; when the rest of the suggestion supplies that closer it is replaced too."""
    if not ctx.prefix.startswith(shown.prefix) or not ctx.suffix.endswith(shown.suffix):
        return None
    typed = ctx.prefix[len(shown.prefix) :]
    inserted = ctx.suffix[: len(ctx.suffix) - len(shown.suffix)]  # auto-closed characters
    text = shown.suggestion.text
    if not typed and not inserted:
        return shown.suggestion
    if not typed or not text.startswith(typed) or len(typed) >= len(text):
        return None
    rest = text[len(typed) :]
    replace_chars = shown.suggestion.replace_chars
    if inserted:
        if any(c not in CLOSE_TO_OPEN and c not in QUOTES for c in inserted) or inserted not in rest:
            return None
        replace_chars += len(inserted)
    if rest == ctx.suffix[:replace_chars]:
        return None  # only the closers already there are left
    return Suggestion(text=rest, replace_chars=replace_chars)
