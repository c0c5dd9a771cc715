"""LSP positions to character offsets, and the text on either side of the cursor.

An LSP position is a line and a column counted in the code units of the negotiated encoding:
UTF-16 (the default, VS Code), UTF-8 (Neovim) or UTF-32 (code points). Python strings index code
points, so a column must be converted before the text can be split. Line breaks are `\\n`, `\\r\\n`
and `\\r`, as the LSP specification defines them (not Python's `splitlines`, which also breaks on
form feeds and U+2028). Pure: plain strings in, plain data out.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Encoding = Literal["utf-8", "utf-16", "utf-32"]
ENCODINGS: tuple[Encoding, ...] = ("utf-8", "utf-16", "utf-32")

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_BLOCK = 4096  # characters counted at a time when looking for a line


class InvalidPosition(ValueError):
    """An LSP position or offset the text cannot hold (negative, not an int, unknown encoding)."""


def char_units(char: str, encoding: Encoding) -> int:
    """How many code units one code point takes in `encoding`."""
    code = ord(char)
    if encoding == "utf-16":
        return 2 if code > 0xFFFF else 1
    if encoding == "utf-8":
        return 1 if code < 0x80 else 2 if code < 0x800 else 3 if code < 0x10000 else 4
    return 1


def units_to_chars(line: str, units: int, encoding: Encoding) -> int:
    """The code-point index in `line` at `units` code units; rounds down inside a character,
    clamps to the line's length."""
    if encoding == "utf-32" or line.isascii():
        return min(units, len(line))
    seen = 0
    for index, char in enumerate(line):
        seen += char_units(char, encoding)
        if seen > units:
            return index
    return len(line)


def chars_to_units(line: str, chars: int, encoding: Encoding) -> int:
    """Code units taken by the first `chars` code points of `line`."""
    head = line[:chars]
    if encoding == "utf-32" or head.isascii():
        return len(head)
    if encoding == "utf-8":
        return len(head.encode("utf-8", "surrogatepass"))
    return len(head) + sum(1 for char in head if ord(char) > 0xFFFF)


def _check_encoding(encoding: str) -> None:
    if encoding not in ENCODINGS:
        raise InvalidPosition(f"unknown position encoding {encoding!r}; expected one of {ENCODINGS}")


def _check_index(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidPosition(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 0:
        raise InvalidPosition(f"{name} must be >= 0, got {value}")


def _count_breaks(text: str, start: int, end: int, has_cr: bool) -> int:
    """LSP line breaks in text[start:end] (`\r\n` counts once)."""
    n = text.count("\n", start, end)
    if has_cr:
        n += text.count("\r", start, end) - text.count("\r\n", start, end)
    return n


def line_start(text: str, line: int) -> int | None:
    """Offset where line `line` starts; None past the last line.

    Skips whole blocks of text with C-speed counts before walking single breaks, so a cursor at the
    end of a 5,000-line file costs tens of microseconds rather than a Python loop over every line."""
    pos, remaining = 0, line
    has_cr = "\r" in text
    while remaining > 0:
        end = min(pos + _BLOCK, len(text))
        if text.startswith("\r\n", end - 1):
            end += 1  # never split a \r\n between blocks
        found = _count_breaks(text, pos, end, has_cr)
        if found < remaining:
            if end >= len(text):
                return None
            remaining -= found
            pos = end
            continue
        for match in _LINE_BREAK.finditer(text, pos, end):
            remaining -= 1
            if remaining == 0:
                return match.end()
    return pos


def line_span(text: str, line: int) -> tuple[int, int] | None:
    """(start, end) code-point offsets of line `line` without its break; None past the last line."""
    start = line_start(text, line)
    if start is None:
        return None
    match = _LINE_BREAK.search(text, start)
    return start, match.start() if match else len(text)


def position_to_offset(text: str, line: int, character: int, encoding: Encoding = "utf-16") -> int:
    """The code-point offset in `text` of an LSP position.

    A character past the line's end clamps to the line end and a line past the last line clamps to
    the end of the text (the LSP specification's rule); a column inside a surrogate pair (UTF-16)
    or a multi-byte character (UTF-8) rounds down to the character's start.
    """
    _check_index("line", line)
    _check_index("character", character)
    _check_encoding(encoding)
    span = line_span(text, line)
    if span is None:
        return len(text)
    start, end = span
    return start + units_to_chars(text[start:end], character, encoding)


def offset_to_position(text: str, offset: int, encoding: Encoding = "utf-16") -> tuple[int, int]:
    """The LSP (line, character) of a code-point offset; an offset inside a `\\r\\n` maps to the
    end of its line."""
    _check_index("offset", offset)
    _check_encoding(encoding)
    if offset > len(text):
        raise InvalidPosition(f"offset {offset} is past the end of a {len(text)}-character text")
    if 0 < offset < len(text) and text[offset - 1] == "\r" and text[offset] == "\n":
        offset -= 1  # between \r and \n: the end of the line that break ends
    head = text[:offset]
    line = head.count("\n") + head.count("\r") - head.count("\r\n")
    line_start = _last_break_end(head)
    return line, chars_to_units(text[line_start:offset], offset - line_start, encoding)


def _last_break_end(text: str) -> int:
    """Offset where the last line of `text` starts."""
    return max(text.rfind("\n"), text.rfind("\r")) + 1


def _first_break_start(text: str) -> int:
    """Offset where the first line of `text` ends (its break, or the end of the text)."""
    found = [i for i in (text.find("\n"), text.find("\r")) if i >= 0]
    return min(found) if found else len(text)


@dataclass(frozen=True, slots=True)
class CursorContext:
    """A document split at the cursor: `prefix + suffix` is the whole text."""

    prefix: str  # text before the cursor
    suffix: str  # text after the cursor

    @property
    def line_prefix(self) -> str:
        """The cursor's line, from its start to the cursor."""
        return self.prefix[_last_break_end(self.prefix) :]

    @property
    def line_suffix(self) -> str:
        """The cursor's line, from the cursor to its end (no line break)."""
        return self.suffix[: _first_break_start(self.suffix)]

    @property
    def line(self) -> int:
        """The cursor's 0-based line number."""
        p = self.prefix
        return p.count("\n") + p.count("\r") - p.count("\r\n")

    @property
    def newline(self) -> str:
        """The line break nearest the cursor (`\\n` when the document has none): suggestions use it."""
        before = max(self.prefix.rfind("\n"), self.prefix.rfind("\r"))
        if before >= 0:
            return "\r\n" if self.prefix.endswith("\r\n", 0, before + 1) else self.prefix[before]
        match = _LINE_BREAK.search(self.suffix)
        return match.group() if match else "\n"


def cursor_context(text: str, line: int, character: int, encoding: Encoding = "utf-16") -> CursorContext:
    """Split `text` at an LSP position (see position_to_offset for clamping)."""
    offset = position_to_offset(text, line, character, encoding)
    return CursorContext(prefix=text[:offset], suffix=text[offset:])
