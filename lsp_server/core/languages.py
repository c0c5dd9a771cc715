"""What the prompt core needs to know about programming languages: line comments and file names.

Language ids are the LSP `languageId` values editors send (`python`, `typescript`, ...) and the
kernel languages Jupyter reports. Pure: a table and two look-ups.
"""
from __future__ import annotations

import posixpath

# language id -> the token that starts a line comment
_LINE_COMMENT: dict[str, str] = {
    **dict.fromkeys(
        ["python", "r", "julia", "ruby", "perl", "shellscript", "bash", "sh", "powershell", "yaml",
         "toml", "dockerfile", "makefile", "cmake", "elixir", "nim", "coffeescript", "tcl"], "#"),
    **dict.fromkeys(
        ["c", "cpp", "csharp", "java", "javascript", "javascriptreact", "typescript", "typescriptreact",
         "go", "rust", "kotlin", "scala", "swift", "dart", "php", "groovy", "objective-c", "zig",
         "solidity", "verilog", "proto", "jsonc"], "//"),
    **dict.fromkeys(["sql", "lua", "haskell", "ada", "elm"], "--"),
    **dict.fromkeys(["matlab", "octave", "erlang", "prolog", "latex", "tex"], "%"),
    **dict.fromkeys(["lisp", "clojure", "scheme", "racket", "ini"], ";"),
    "fortran": "!",
    "vb": "'",
}

# file extension (lower case, with the dot) -> language id
_EXTENSION: dict[str, str] = {
    ".py": "python", ".pyi": "python", ".ipynb": "python", ".r": "r", ".jl": "julia", ".rb": "ruby",
    ".pl": "perl", ".sh": "shellscript", ".bash": "shellscript", ".ps1": "powershell", ".yaml": "yaml",
    ".yml": "yaml", ".toml": "toml", ".ex": "elixir", ".exs": "elixir", ".nim": "nim",
    ".c": "c", ".h": "c", ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".hpp": "cpp", ".cs": "csharp",
    ".java": "java", ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript",
    ".jsx": "javascriptreact", ".ts": "typescript", ".tsx": "typescriptreact", ".go": "go",
    ".rs": "rust", ".kt": "kotlin", ".scala": "scala", ".swift": "swift", ".dart": "dart",
    ".php": "php", ".groovy": "groovy", ".m": "objective-c", ".zig": "zig", ".sol": "solidity",
    ".v": "verilog", ".proto": "proto", ".sql": "sql", ".lua": "lua", ".hs": "haskell", ".elm": "elm",
    ".erl": "erlang", ".tex": "latex", ".clj": "clojure", ".scm": "scheme", ".rkt": "racket",
    ".lisp": "lisp", ".f90": "fortran", ".vb": "vb",
}

DEFAULT_LINE_COMMENT = "#"


def line_comment(language: str) -> str:
    """The line-comment token of a language id; `#` for languages the table does not know."""
    return _LINE_COMMENT.get(language.lower(), DEFAULT_LINE_COMMENT)


def language_of(path: str) -> str | None:
    """The language id a file name implies, or None when its extension is unknown."""
    name = posixpath.basename(path.replace("\\", "/")).lower()
    if name in ("makefile", "gnumakefile"):
        return "makefile"
    if name == "dockerfile":
        return "dockerfile"
    return _EXTENSION.get(posixpath.splitext(name)[1])
