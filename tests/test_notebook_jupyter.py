"""Notebooks in StarCoder's Jupyter format: golden texts and prompts, the family choice, and cache
reuse while a cell is edited."""
from __future__ import annotations

import pytest

from engine.fim import FimTokens
from engine.tokenizer import CheckpointTokenizer
from lsp_server.core.notebook import Cell, map_cell_position, notebook_context, notebook_style, notebook_text
from lsp_server.core.prompt import PromptConfig, build_prompt
from tests.conftest import kit

STARCODER = FimTokens(family="starcoder", eod="<|endoftext|>", prefix="<fim_prefix>", middle="<fim_middle>",
                      suffix="<fim_suffix>", pad="<fim_pad>", filename="<filename>", jupyter=True)
CELLS = [Cell("markdown", "# Title\n\nSome *text*"), Cell("code", "import os\nx = 1", output="1"),
         Cell("code", "print(x)")]
JUPYTER_TEXT = ("<jupyter_start><jupyter_text># Title\n\nSome *text*\n"
                "<jupyter_code>import os\nx = 1\n<jupyter_output>1\n"
                "<jupyter_code>print(x)\n")


def count_chars(text: str) -> int:
    return len(text)


def test_jupyter_text_is_golden():
    assert notebook_text(CELLS, "python", "jupyter") == (JUPYTER_TEXT, [0, 3, 6])
    multi = [Cell("code", "a\r\nb", output="out 1\nout 2\n"), Cell("markdown", "")]
    assert notebook_text(multi, "python", "jupyter") == (
        "<jupyter_start><jupyter_code>a\nb\n<jupyter_output>out 1\nout 2\n<jupyter_text>\n", [0, 4])


def test_a_cell_ending_in_a_lone_carriage_return_keeps_its_empty_last_line():
    """"x = 1\r\n\r" is three lines; the line break after the cell must not merge with its \r into
    one \r\n (found by the notebook state machine: the prompt lost a line, the cursor moved)."""
    cells = [Cell("code", "x = 1\r\n\r"), Cell("code", "y\r")]
    assert notebook_text(cells, "python", "jupyter") == (
        "<jupyter_start><jupyter_code>x = 1\n\n\n<jupyter_code>y\n\n", [0, 3])
    assert map_cell_position(cells, "python", 1, 1, 0, "utf-16", "jupyter") == (4, 0)
    assert map_cell_position(cells, "python", 0, 2, 0, "utf-16", "jupyter") == (2, 0)


@pytest.mark.parametrize("cell, line, character, encoding, expected", [
    (0, 0, 2, "utf-16", (0, len("<jupyter_start><jupyter_text>") + 2)),  # first line: after both markers
    (0, 2, 4, "utf-16", (2, 4)),  # later lines: as they are
    (1, 0, 0, "utf-8", (3, len("<jupyter_code>"))),
    (2, 5, 0, "utf-16", (6, len("<jupyter_code>print(x)"))),  # past the end: clamps
])
def test_jupyter_positions_map_onto_the_cell_text(cell, line, character, encoding, expected):
    assert map_cell_position(CELLS, "python", cell, line, character, encoding, "jupyter") == expected


def test_markdown_is_text_and_outputs_are_sent_in_the_starcoder_prompt():
    ctx = notebook_context(CELLS, "python", 2, 0, len("print("), "utf-16", "jupyter")
    prompt = build_prompt(ctx, STARCODER, count_chars, 4096, PromptConfig(), path="analysis.ipynb")
    assert prompt.text == (
        "<filename>analysis.ipynb\n<fim_prefix><fim_suffix>x)\n<fim_middle>"
        "<jupyter_start><jupyter_text># Title\n\nSome *text*\n<jupyter_code>import os\nx = 1\n"
        "<jupyter_output>1\n<jupyter_code>print(")
    assert "# # Title" not in prompt.text  # markdown is not turned into comments


def test_starcoders_kit_tokenizer_has_the_jupyter_tokens_and_santacoders_does_not():
    star = CheckpointTokenizer.from_dir(kit(shape="tiny", family="starcoder"))
    santa = CheckpointTokenizer.from_dir(kit(shape="tiny", family="santacoder"))
    assert notebook_style(star.fim) == "jupyter" and notebook_style(santa.fim) == "percent"
    for token in ("<jupyter_start>", "<jupyter_text>", "<jupyter_code>", "<jupyter_output>"):
        assert len(star.encode(token)) == 1, token  # one special token each, never split
        assert token in star.fim.stop_tokens()  # a model that emits one has ended the cell
    text, _ = notebook_text(CELLS, "python", notebook_style(santa.fim))
    assert text.startswith("# %% [markdown]\n# # Title") and "<jupyter" not in text


def test_cache_reuse_holds_while_a_cell_is_edited():
    """Typing into the middle cell (and into a line of its own) keeps each keystroke's prompt tokens
    equal to the last one's but for the last few: the engine reuses the rest of its K/V."""
    tok = CheckpointTokenizer.from_dir(kit(shape="tiny", family="starcoder"))
    fim = tok.fim
    count = lambda text: len(tok.encode(text))  # noqa: E731
    typed = "total = sum(values)\nprint(total)"
    previous: list[int] | None = None
    worst = 0
    for k in range(1, len(typed) + 1):
        cell_text = "values = [1, 2, 3]\n" + typed[:k]
        cells = [Cell("markdown", "## Sums\nAdd the values."), Cell("code", cell_text), Cell("markdown", "Done."),
                 Cell("code", "assert total == 6")]
        lines = cell_text.split("\n")
        ctx = notebook_context(cells, "python", 1, len(lines) - 1, len(lines[-1]), "utf-16", "jupyter")
        ids = tok.encode(build_prompt(ctx, fim, count, 2048, PromptConfig(), path="sums.ipynb").text)
        if previous is not None:
            shared = next((i for i, (a, b) in enumerate(zip(previous, ids)) if a != b), min(len(previous), len(ids)))
            worst = max(worst, len(previous) - shared)
        previous = ids
    assert worst <= 3, f"a keystroke recomputed {worst} of the previous prompt's tokens"
