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
    assert uri_to_path(uri, ["file:///home/me/proj/", "file:///home/me/proj/src", "file:///home/me/other"]) == "my file.py"
    assert uri_to_path(uri, ["file:///home/me/pro", "untitled:x"]) == "my file.py"  # a name prefix is no folder
    assert uri_to_path(uri, ["file:///home/me"]) == "proj/src/my file.py"
    assert uri_to_path("untitled:Untitled-1", ["file:///home/me"]) == "untitled:Untitled-1"
