"""The document store: incremental edits in every position encoding, LSP line breaks, notebooks."""
from __future__ import annotations

import pytest

from lsp_server.documents import Document, DocumentStore, Edit, apply_edit, excluded, uri_to_path


@pytest.mark.parametrize("encoding, character", [("utf-16", 4), ("utf-8", 6), ("utf-32", 3)])
def test_edit_after_emoji_in_each_encoding(encoding, character):
    # "a😀b" then the cursor after "b": utf-16 counts 😀 as 2 units, utf-8 as 4, utf-32 as 1
    assert apply_edit("a😀b\n", Edit("!", (0, character, 0, character)), encoding) == "a😀b!\n"


def test_form_feed_and_line_separator_are_not_line_breaks():
    text = "x = 1\x0cy = 2\u2028z\nsecond"
    assert apply_edit(text, Edit("#", (1, 0, 1, 0)), "utf-16") == "x = 1\x0cy = 2\u2028z\n#second"


def test_crlf_and_replacement_across_lines():
    text = "one\r\ntwo\r\nthree"
    assert apply_edit(text, Edit("X", (0, 1, 2, 2)), "utf-16") == "oXree"


def test_positions_past_the_end_clamp():
    assert apply_edit("ab\ncd", Edit("!", (0, 99, 0, 99)), "utf-16") == "ab!\ncd"
    assert apply_edit("ab\ncd", Edit("!", (9, 0, 9, 0)), "utf-16") == "ab\ncd!"


def test_full_text_change_and_reversed_range():
    assert apply_edit("old", Edit("new"), "utf-16") == "new"
    with pytest.raises(ValueError, match="ends .* before it starts"):
        apply_edit("abc", Edit("", (0, 2, 0, 1)), "utf-16")


def test_store_applies_edits_in_order_and_never_invents_documents():
    store = DocumentStore()
    store.open("file:///a.py", "def f():\n    pass\n", 1, "python")
    store.change("file:///a.py", 2, [Edit("return 1", (1, 4, 1, 8)), Edit("# top\n", (0, 0, 0, 0))], "utf-16")
    assert store.get("file:///a.py") == Document("file:///a.py", "# top\ndef f():\n    return 1\n", 2, "python")
    assert store.get("file:///never-opened.py") is None
    with pytest.raises(KeyError):
        store.change("file:///never-opened.py", 1, [Edit("x")], "utf-16")


def test_others_are_open_documents_of_the_same_language():
    store = DocumentStore()
    store.open("file:///a.py", "a", 1, "python")
    store.open("file:///b.py", "b", 1, "python")
    store.open("file:///c.js", "c", 1, "javascript")
    assert store.others("file:///a.py") == [("b.py", "b")]
    assert store.others("file:///a.py", ["file:///"]) == [("b.py", "b")]
    store.open("file:///w/.env.py", "TOKEN = 1", 1, "python")
    assert store.others("file:///a.py", ["file:///w/"], exclude=[".env*"]) == [("b.py", "b")]
    assert ("file:///w/.env.py", "TOKEN = 1") not in store.others("file:///a.py", exclude=["**/.env*"])


@pytest.mark.parametrize("path, patterns, expected", [
    (".env", [".env"], True),
    ("app/.env", [".env"], True),  # a name matches at any depth
    ("env.py", [".env"], False),
    ("app/.env", ["**/.env"], True),
    (".env", ["**/.env"], True),  # a leading **/ may match no directory
    ("secrets/db.py", ["secrets"], True),  # a directory name excludes what is under it
    ("a/secrets/db.py", ["secrets/"], True),
    ("keys/server.pem", ["*.pem"], True),
    ("config/local.py", ["config/*.py"], True),  # with a slash: from the workspace folder
    ("src/config/local.py", ["config/*.py"], False),
    ("vendor/a/b/c.py", ["vendor/**"], True),
    ("app.py", [".env", "*.pem", "secrets"], False),
    ("app.py", [], False),
])
def test_exclude_patterns_read_like_gitignore(path, patterns, expected):
    assert excluded(path, patterns) is expected


def test_notebook_cells_splice_and_close():
    store = DocumentStore()
    cells = [Document("nb:c1", "import os", 1, "python"), Document("nb:c2", "# Title", 1, "markdown")]
    store.open_notebook("file:///n.ipynb", [("nb:c1", "code"), ("nb:c2", "markdown")], cells)
    store.splice_cells("file:///n.ipynb", 1, 0, [("nb:c3", "code")])
    store.open("nb:c3", "x = 1", 1, "python", notebook_uri="file:///n.ipynb")
    assert store.notebooks["file:///n.ipynb"].cells == [("nb:c1", "code"), ("nb:c3", "code"), ("nb:c2", "markdown")]
    assert store.get("nb:c3").notebook_uri == "file:///n.ipynb"
    store.close_notebook("file:///n.ipynb")
    assert store.documents == {} and store.notebooks == {}


def test_uri_to_path_is_relative_to_the_innermost_workspace_folder_else_the_file_name():
    uri = "file:///home/me/proj/src/my%20file.py"
    assert uri_to_path(uri) == "my file.py"
    assert uri_to_path(uri, ["file:///home/me/proj"]) == "src/my file.py"
    assert uri_to_path(uri, ["file:///home/me/proj/", "file:///home/me/proj/src",
                             "file:///home/me/other"]) == "my file.py"
    assert uri_to_path(uri, ["file:///home/me/pro", "untitled:x"]) == "my file.py"  # a name prefix is no folder
    assert uri_to_path(uri, ["file:///home/me"]) == "proj/src/my file.py"
    assert uri_to_path("untitled:Untitled-1", ["file:///home/me"]) == "untitled:Untitled-1"


# ------------------------------------------------------------------------------------------------
# Issue 27: atomic, linear edits; normalised exclude paths; cell kinds in one pass

import random  # noqa: E402

from lsp_server.edits import SMALL_CHANGE, EditError, _apply_to_lines, _apply_to_string, apply_edits  # noqa: E402


def test_the_line_list_path_and_the_string_path_agree_on_random_changes():
    rng = random.Random(27)
    pieces = ["a", "\n", "\r", "\r\n", "😀", "é", "xy", "\x0c", "\u2028", "你"]
    for _ in range(2000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        edits = []
        for _ in range(rng.randint(1, 5)):
            a, b = sorted([(rng.randint(0, 4), rng.randint(0, 5)), (rng.randint(0, 4), rng.randint(0, 5))])
            edits.append(Edit("".join(rng.choice(pieces) for _ in range(rng.randint(0, 3))), (*a, *b)))
        for encoding in ("utf-16", "utf-8", "utf-32"):
            results = []
            for apply in (_apply_to_string, _apply_to_lines):
                try:
                    results.append(apply(text, edits, encoding))
                except EditError:
                    results.append("rejected")
            assert results[0] == results[1], (text, edits, encoding)


def test_a_change_is_applied_whole_or_not_at_all():
    edits = [Edit("X", (0, 0, 0, 0)), Edit("Y", (0, 3, 0, 1)), Edit("Z", (0, 0, 0, 0))]
    with pytest.raises(EditError, match="edit 2: its range ends"):
        apply_edits("abcdef", edits, "utf-16")
    store = DocumentStore()
    store.open("file:///a.py", "abcdef", 1, "python")
    with pytest.raises(EditError):
        store.change("file:///a.py", 2, edits, "utf-16")
    doc = store.get("file:///a.py")
    assert (doc.text, doc.version, doc.in_sync) == ("abcdef", 1, False)
    assert store.others("file:///b.py") == [] and DocumentStore().others("file:///a.py") == []
    with pytest.raises(EditError, match="out of sync"):  # further edits would land on a guess
        store.change("file:///a.py", 3, [Edit("!", (0, 0, 0, 0))], "utf-16")
    store.change("file:///a.py", 4, [Edit("fresh"), Edit("!", (0, 5, 0, 5))], "utf-16")
    assert (doc.text, doc.version, doc.in_sync) == ("fresh!", 4, True)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8"])
def test_many_edits_take_the_line_list_path_and_match_one_by_one(encoding):
    text = "".join(f"line {i} 😀 ü\r\n" if i % 3 else f"row {i}\n" for i in range(300))
    rng = random.Random(5 if encoding == "utf-16" else 21)  # seeds whose positions all land between characters
    edits = []
    for _ in range(SMALL_CHANGE * 4):
        line = rng.randint(0, 320)
        typed = rng.choice(["", "x", "\n", "new\r\nlines", "😀"])
        edits.append(Edit(typed, (line, rng.randint(0, 4), line, rng.randint(5, 7))))
    one_by_one = text
    try:
        for e in edits:
            one_by_one = apply_edits(one_by_one, [e], encoding)
    except EditError:  # UTF-8: a position fell inside a character; the whole change is refused too
        with pytest.raises(EditError):
            apply_edits(text, edits, encoding)
        return
    assert apply_edits(text, edits, encoding) == one_by_one


@pytest.mark.parametrize("path", ["x/../config/a.py", "./config//a.py", "config/./sub/../a.py"])
def test_paths_are_normalised_before_matching(path):
    assert excluded(path, ["config/*.py"], fold_case=False)
    assert not excluded(path.replace("config", "other"), ["config/*.py"], fold_case=False)


@pytest.mark.parametrize("uri", [
    "file:///work/project/x/../config/a.py",
    "file:///work/project/x/%2e%2e/config/a.py",
    "file:///work/project/x/%2E%2E/./config//a.py",
    "file:///work/project//config/a.py",
])
def test_an_excluded_path_cannot_be_reached_by_another_spelling_of_its_uri(uri):
    path = uri_to_path(uri, ["file:///work/project"])
    assert path == "config/a.py" and excluded(path, ["config/*.py"])


def test_case_is_folded_where_the_file_system_ignores_it():
    assert excluded("Config/A.PY", ["config/*.py"], fold_case=True)
    assert not excluded("Config/A.PY", ["config/*.py"], fold_case=False)
    assert excluded("SECRETS/x.txt", ["secrets"], fold_case=True)


def test_cell_kinds_change_in_one_pass_for_many_cells():
    store = DocumentStore()
    cells = [(f"cell{i}", "code") for i in range(10_000)]
    store.open_notebook("nb", cells, [])
    store.set_cell_kinds("nb", {f"cell{i}": "markdown" for i in range(0, 10_000, 2)})
    assert store.notebooks["nb"].cells[:3] == [("cell0", "markdown"), ("cell1", "code"), ("cell2", "markdown")]
    store.set_cell_kind("nb", "cell1", "markdown")
    assert store.notebooks["nb"].cells[1] == ("cell1", "markdown")


def test_others_come_newest_first_and_skip_documents_out_of_sync():
    store = DocumentStore()
    for name in ("a", "b", "c"):
        store.open(f"file:///{name}.py", name, 1, "python")
    store.change("file:///a.py", 2, [Edit("a2")], "utf-16")
    assert [p for p, _ in store.others("file:///c.py")] == ["a.py", "b.py"]
    with pytest.raises(EditError):
        store.change("file:///b.py", 2, [Edit("", (0, 1, 0, 0))], "utf-16")
    assert [p for p, _ in store.others("file:///c.py")] == ["a.py"]
