"""Which files gitignore rules leave out, decided as git decides: the `exclude` setting, and the
workspace's own .gitignore files for neighbour snippets.

Patterns are git's (pathspec's `GitIgnoreSpec`): `*` stays within a directory and `**` crosses
them, a `/` at the start or in the middle anchors a pattern to the folder its rules belong to, a
trailing `/` matches directories only, `!` re-includes, and the last matching pattern wins. As in
git, a file under an excluded directory stays excluded whatever a later `!` says (git never looks
inside such a directory), and a deeper .gitignore overrides a shallower one. Paths are normalised
first (`.`, `..`, repeated slashes), so no spelling of a path slips past a pattern.
"""
from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pathspec import GitIgnoreSpec

GITIGNORE = ".gitignore"
INFO_EXCLUDE = ".git/info/exclude"  # the repository's own rules that are not committed


@dataclass(frozen=True, slots=True)
class Rules:
    """The patterns of one .gitignore file (or of the `exclude` setting), for paths under `base`."""

    base: str  # the directory the patterns belong to, relative to the workspace folder ("" = the folder)
    files: GitIgnoreSpec  # the patterns as written, checked against a file's path
    # the same without their trailing "/", checked against a directory's path: pathspec has no
    # "this is a directory" flag, and "dir/" matched against "dir/" would also let "dir/**" match it
    directories: GitIgnoreSpec


@lru_cache(maxsize=256)
def gitignore_rules(patterns: tuple[str, ...], base: str = "") -> Rules:
    """`patterns` (lines of a .gitignore: blanks and `#` comments allowed) compiled for paths under
    `base`; ValueError naming a pattern git's syntax does not allow."""
    as_directories = [p.rstrip(" ")[:-1] if p.rstrip(" ").endswith("/") else p for p in patterns]
    return Rules(base, GitIgnoreSpec.from_lines(patterns), GitIgnoreSpec.from_lines(as_directories))


def valid_lines(lines: Sequence[str]) -> tuple[str, ...]:
    """The lines of a .gitignore file that pathspec accepts (git skips a bad pattern, not the file)."""
    def valid(line: str) -> bool:
        try:
            GitIgnoreSpec.from_lines([line])
        except ValueError:
            return False
        return True
    return tuple(line for line in lines if valid(line))


def normalise_path(path: str) -> str:
    """`path` relative to its folder, "/"-separated, without `.`, `..` or repeated slashes (a `..`
    above the folder stops there, as at the file system's root)."""
    return posixpath.normpath("/" + path.replace("\\", "/")).lstrip("/")


def ignored(path: str, layers: Sequence[Rules]) -> bool:
    """Whether git would ignore the file `path` (relative to the workspace folder) under `layers`,
    the shallowest first: each directory above the file, then the file itself."""
    parts = normalise_path(path).split("/")
    return any(verdict("/".join(parts[:depth]), depth < len(parts), layers) for depth in range(1, len(parts) + 1))


def verdict(path: str, is_dir: bool, layers: Sequence[Rules]) -> bool:
    """The deepest layer that has a say on `path` decides; within it, the last matching pattern."""
    for rules in reversed(layers):
        if rules.base and not path.startswith(rules.base + "/"):
            continue
        spec = rules.directories if is_dir else rules.files
        result = spec.check_file(path[len(rules.base) + 1 if rules.base else 0:])
        if result.include is not None:
            return result.include
    return False


class GitignoreFiles:
    """The .gitignore files of a workspace folder, read when first needed and again once changed.

    Only files named .gitignore in the folder and in the directories between it and a document
    (and the folder's .git/info/exclude) are ever read.
    """

    def __init__(self) -> None:
        self.read: dict[Path, tuple[tuple[int, int], Rules]] = {}  # file -> ((mtime_ns, size), its rules)

    def ignores(self, folder: Path, path: str) -> bool:
        """Whether the workspace folder's gitignore rules leave out the file at `path` within it."""
        path = normalise_path(path)
        directories = [""] + ["/".join(path.split("/")[:i]) for i in range(1, path.count("/") + 1)]
        layers = [self.rules(folder / INFO_EXCLUDE, "")]
        layers += [self.rules(folder / d / GITIGNORE, d) for d in directories]
        return ignored(path, [layer for layer in layers if layer is not None])

    def rules(self, file: Path, base: str) -> Rules | None:
        """The rules of one file; None when it does not exist (or cannot be read)."""
        try:
            stat = file.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if (known := self.read.get(file)) is not None and known[0] == stamp:
                return known[1]
            rules = gitignore_rules(valid_lines(file.read_text(encoding="utf-8", errors="replace").splitlines()), base)
        except OSError:
            return None  # absent or unreadable: the file says nothing
        self.read[file] = (stamp, rules)
        return rules
