"""Neighbour snippets: word sets, the sliding window, limits and bad input."""
from __future__ import annotations

import pytest

from lsp_server.core.context import CursorContext
from lsp_server.core.neighbours import (MAX_DOCUMENT_CHARS, MAX_SNIPPETS, Snippet, WINDOW_LINES, jaccard,
                                   select_snippets, text_around_cursor, window_score, word_set)


def test_word_sets_drop_keywords_and_case():
    assert word_set("def Load_Config(self, path):\n    return open(path)") == {"load_config", "path", "open"}
    assert jaccard(frozenset("ab"), frozenset("bc")) == 1 / 3
    assert jaccard(frozenset(), frozenset()) == 0.0


def test_a_windows_score_is_the_jaccard_similarity_of_its_words():
    around = frozenset({"path", "open", "mode"})
    for words in [("path", "read"), ("path", "open", "mode"), (), ("other",)]:
        assert window_score(words, around) == jaccard(frozenset(words), around)
    assert window_score((), frozenset()) == 0.0


def test_a_document_over_the_size_cap_gives_no_snippet():
    window = "def resize_image(image, width):\n    return image.scale(width)\n"
    fits = window * (MAX_DOCUMENT_CHARS // len(window))
    assert select_snippets("resize_image(image, width)", [("fits.py", fits)], 1000, len)
    assert select_snippets("resize_image(image, width)", [("big.py", fits + window)], 1000, len) == []


def test_text_around_cursor_takes_lines_either_side():
    ctx = CursorContext("a\nb\nc\nd = ", "e\nf\ng\n")
    assert text_around_cursor(ctx, lines_before=2, lines_after=1) == "b\nc\nd = e\nf"


def test_the_matching_window_of_a_long_document_is_chosen():
    filler = "".join(f"unrelated_{i} = compute_{i}()\n" for i in range(60))
    target = "def resize_image(image, width):\n    height = image.height * width // image.width\n"
    document = filler + target + filler
    (snippet,) = select_snippets("resized = resize_image(image, width)\n", [("img.py", document)], 1000, len)
    assert target in snippet.text and snippet.text.count("\n") == WINDOW_LINES


def test_at_most_one_snippet_per_document_and_a_few_in_all():
    others = [(f"m{i}.py", "total = compute_total(items)\n") for i in range(6)]
    chosen = select_snippets("total = compute_total(items)\n", others, 10_000, len)
    assert len(chosen) == MAX_SNIPPETS and len({s.path for s in chosen}) == MAX_SNIPPETS


def test_zero_budget_blank_documents_and_bad_budget():
    assert select_snippets("x = value", [("a.py", "x = value\n")], 0, len) == []
    assert select_snippets("x = value", [("a.py", "  \n\n")], 100, len) == []
    with pytest.raises(ValueError, match="budget_tokens"):
        select_snippets("x", [], -1, len)


def test_previous_dropped_when_it_no_longer_fits_the_budget():
    previous = [Snippet("a.py", "x = value\n")]
    assert select_snippets("x = value", [("a.py", "x = value\n")], 5, len, previous=previous) == []
