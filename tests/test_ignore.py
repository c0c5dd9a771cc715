"""gitignore rules as git applies them: a golden table checked against `git check-ignore`, nested
.gitignore files, and paths normalised before any pattern sees them."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from lsp_server.documents import DocumentStore, excluded, uri_to_path, workspace_file
from lsp_server.ignore import GitignoreFiles, gitignore_rules, ignored, normalise_path

# (patterns of one .gitignore at the top, a file's path, whether git ignores it)
GOLDEN = [
    (["*.pem"], "key.pem", True),
    (["*.pem"], "deep/er/key.pem", True),
    (["*.pem"], "key.pem.txt", False),
    (["*.[oa]"], "lib/x.o", True),
    (["*.[oa]"], "lib/x.c", False),
    (["a?c"], "abc", True),
    (["a?c"], "a/c", False),  # ? is not a slash
    (["config/*.py"], "config/a.py", True),
    (["config/*.py"], "config/sub/a.py", False),  # * stays within a directory
    (["config/*.py"], "src/config/a.py", False),  # an inner slash anchors
    (["/.env"], ".env", True),
    (["/.env"], "app/.env", False),  # a leading slash anchors
    ([".env"], "app/.env", True),  # a name matches at any depth
    (["**/.env"], ".env", True),  # a leading **/ may match no directory
    (["**/.env"], "app/deep/.env", True),
    (["secrets/"], "secrets/a.txt", True),
    (["secrets/"], "app/secrets/a.txt", True),
    (["secrets/"], "secrets", False),  # a trailing slash matches directories only
    (["secrets"], "secrets", True),
    (["secrets"], "app/secrets/db.py", True),  # a directory name excludes what is under it
    (["doc/frotz/"], "doc/frotz/a.txt", True),
    (["doc/frotz/"], "x/doc/frotz/a.txt", False),
    (["a/**/b.py"], "a/b.py", True),  # /**/ may match no directory
    (["a/**/b.py"], "a/x/y/b.py", True),
    (["a/**/b.py"], "c/a/x/b.py", False),
    (["logs/**"], "logs/x/y.log", True),
    (["logs/**", "!logs/keep.txt"], "logs/keep.txt", False),  # logs/** does not exclude logs itself
    (["logs/**", "!logs/keep.txt"], "logs/drop.txt", True),
    (["build/", "!build/keep.txt"], "build/keep.txt", True),  # a file in an excluded directory stays excluded
    (["build", "!build/keep.txt"], "build/keep.txt", True),
    (["foo/*"], "foo/bar/baz.txt", True),
    (["*.log", "!important.log"], "x/important.log", False),
    (["*.log", "!important.log"], "x/other.log", True),
    (["!important.log", "*.log"], "important.log", True),  # the last match wins
    (["*", "!*/", "!*.py"], "src/a.py", False),  # the usual allow-list
    (["*", "!*/", "!*.py"], "src/a.txt", True),
    (["/*", "!/src/"], "src/a.py", False),
    (["/*", "!/src/"], "docs/a.md", True),
    (["/*", "!/src/"], "top.txt", True),
    (["*", "!src"], "src/a.py", True),  # `*` still matches a.py inside src
    (["vendor/**", "!vendor/sub/"], "vendor/sub/a.py", True),
    (["**/tmp/**"], "x/tmp/y/z.txt", True),
    (["**/tmp/**"], "tmp.txt", False),
    (["node_modules"], "web/node_modules/x/index.js", True),
    (["\\#notcomment"], "#notcomment", True),
    (["# comment"], "# comment", False),
    (["\\!bang"], "!bang", True),
    (["trailing   "], "trailing", True),  # unescaped trailing spaces are dropped
    (["", "   ", "*.tmp"], "a.tmp", True),
    (["**"], "anything/at/all.py", True),
    (["*.py", "!/keep/**"], "keep/a.py", False),
    (["*.py", "!/keep/**"], "other/keep/a.py", True),
]


def git_env(home: Path) -> dict[str, str]:
    """git with no user or system configuration (no global excludes file)."""
    return {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull}


def git_ignores(repo: Path, paths: list[str]) -> set[str]:
    """The paths `git check-ignore` says git ignores in `repo`."""
    out = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=repo, input="\n".join(paths) + "\n",
                         capture_output=True, text=True, env=git_env(repo))
    assert out.returncode in (0, 1), out.stderr  # 1: none ignored
    return set(out.stdout.splitlines())


def make_repo(repo: Path, gitignores: dict[str, list[str]], files: list[str]) -> None:
    repo.mkdir()
    subprocess.run(["git", "init", "-q", "."], cwd=repo, check=True, env=git_env(repo))
    for directory, lines in gitignores.items():
        (repo / directory).mkdir(parents=True, exist_ok=True)
        (repo / directory / ".gitignore").write_text("\n".join(lines) + "\n")
    for file in files:
        (repo / file).parent.mkdir(parents=True, exist_ok=True)
        (repo / file).write_text("x\n")


def test_every_golden_row_is_what_git_check_ignore_says_and_what_exclude_does(tmp_path: Path):
    git_says, exclude_says = [], []
    for i, (patterns, path, expected) in enumerate(GOLDEN):
        repo = tmp_path / f"r{i}"
        make_repo(repo, {".": patterns}, [path])
        git_says.append(path in git_ignores(repo, [path]))
        exclude_says.append(excluded(path, patterns))
    expected = [row[2] for row in GOLDEN]
    assert [row for row, says in zip(GOLDEN, git_says) if says != row[2]] == [], "the table disagrees with git"
    assert [row for row, says in zip(GOLDEN, exclude_says) if says != row[2]] == [], "exclude disagrees with git"
    assert git_says == exclude_says == expected


NESTED = {
    ".": ["*.log", "build/", "/local.py", "secret*"],
    "app": ["!debug.log", "/cache/", "generated_*.py"],
    "app/deep": ["*.py", "!keep.py", "!secret_ok.txt"],
}
NESTED_FILES = ["a.log", "app/debug.log", "app/x/debug.log", "app/other.log", "build/out.py", "app/build/o.py",
                "local.py", "app/local.py", "app/cache/c.py", "cache/c.py", "app/generated_1.py", "generated_1.py",
                "app/deep/m.py", "app/deep/keep.py", "app/deep/sub/n.py", "app/deep/secret_ok.txt", "secret.py",
                "app/secret.py", "app/main.py", "README.md", "extra/excluded_by_info.txt"]


def test_nested_gitignore_files_are_read_as_git_reads_them(tmp_path: Path):
    repo = tmp_path / "w"
    make_repo(repo, NESTED, NESTED_FILES)
    (repo / ".git" / "info").mkdir(exist_ok=True)
    (repo / ".git" / "info" / "exclude").write_text("excluded_by_info.txt\n")
    files = GitignoreFiles()
    ours = {path for path in NESTED_FILES if files.ignores(repo, path)}
    assert ours == git_ignores(repo, NESTED_FILES)
    assert "app/debug.log" not in ours and "app/deep/keep.py" not in ours and "app/main.py" not in ours
    # an edited .gitignore is read again
    (repo / "app" / ".gitignore").write_text("main.py\n")
    assert files.ignores(repo, "app/main.py") and not files.ignores(repo, "app/cache/c.py")
    assert files.ignores(repo, "app/main.py") == ("app/main.py" in git_ignores(repo, ["app/main.py"]))


def test_a_bad_line_in_a_gitignore_file_is_skipped_as_git_skips_it(tmp_path: Path):
    repo = tmp_path / "w"
    make_repo(repo, {".": ["!", "*.pem"]}, ["k.pem", "a.py"])
    files = GitignoreFiles()
    assert {p for p in ["k.pem", "a.py"] if files.ignores(repo, p)} == git_ignores(repo, ["k.pem", "a.py"]) == {"k.pem"}
    with pytest.raises(ValueError, match="'!'"):
        gitignore_rules(("!",))


@pytest.mark.parametrize("spelling", [
    "file:///w/proj/x/../config/a.py",
    "file:///w/proj/./config/a.py",
    "file:///w/proj//config///a.py",
    "file:///w/proj/x/%2e%2e/config/a.py",
    "file:///w/proj/x/%2E%2E/config/%2e/a.py",
    "file:///w/proj/config/sub/../a.py",
])
def test_every_spelling_of_a_path_is_excluded_alike(spelling: str):
    assert uri_to_path(spelling, ["file:///w/proj"]) == "config/a.py"
    assert uri_to_path(spelling, ["file:///w/proj/"]) == "config/a.py"
    assert excluded(uri_to_path(spelling, ["file:///w/proj"]), ["/config/*.py"])
    assert workspace_file(spelling, ["file:///w/proj", "file:///w/proj/config"]) == (Path("/w/proj"), "config/a.py")


def test_a_path_cannot_climb_out_of_its_folder_past_a_pattern():
    assert normalise_path("../../etc/../config/a.py") == "config/a.py"
    assert normalise_path("a//b/./c") == "a/b/c"
    assert uri_to_path("file:///w/proj/../other/.env", ["file:///w/proj"]) == ".env"  # outside the folder: its name
    assert ignored("x/../secrets/k", [gitignore_rules(("/secrets/",))])


def test_gitignored_documents_are_left_out_of_neighbour_snippets(tmp_path: Path):
    repo = tmp_path / "w"
    make_repo(repo, {".": ["generated/", "*.local.py"]}, [])
    store, files = DocumentStore(), GitignoreFiles()
    root = repo.as_uri()
    for name in ("main.py", "util.py", "generated/api.py", "settings.local.py"):
        store.open(f"{root}/{name}", name, 1, "python")

    def hidden(uri: str) -> bool:
        found = workspace_file(uri, [root])
        return found is not None and files.ignores(*found)

    assert store.others(f"{root}/main.py", [root], hidden=hidden) == [("util.py", "util.py")]
    assert len(store.others(f"{root}/main.py", [root])) == 3  # the setting off: all of them
