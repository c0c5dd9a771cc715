"""Golden cases for the prompt core: each a literal input and the exact output expected.

One table per item of the prompt core: positions, cursor context, FIM prompts and their window,
notebooks, neighbour snippets, post-processing and forward-typing reuse. Cases marked `he-` are
built from the HumanEval infilling problems (prefix tail, suffix head, canonical middle); the raw
generation there is the canonical middle followed by the model re-typing the suffix, as models do.
"""
from __future__ import annotations

import pytest

from engine.fim import FimTokens
from lsp_server.core.context import (CursorContext, InvalidPosition, cursor_context, offset_to_position,
                                     position_to_offset)
from lsp_server.core.neighbours import Snippet, select_snippets
from lsp_server.core.notebook import Cell, map_cell_position, notebook_context, notebook_text
from lsp_server.core.postprocess import PostprocessConfig, ShownSuggestion, Suggestion, postprocess, reuse_suggestion
from lsp_server.core.prompt import NO_FIM_NOTE, Prompt, PromptConfig, PromptDoesNotFit, build_prompt

STARCODER = FimTokens(family="starcoder", eod="<|endoftext|>", prefix="<fim_prefix>", middle="<fim_middle>",
                      suffix="<fim_suffix>", pad="<fim_pad>", filename="<filename>")
SANTACODER = FimTokens(family="santacoder", eod="<|endoftext|>", prefix="<fim-prefix>", middle="<fim-middle>",
                       suffix="<fim-suffix>", pad="<fim-pad>")
NO_FIM = FimTokens(family="none", eod="<|endoftext|>")
STOPS = STARCODER.stop_tokens()


def count_chars(text: str) -> int:
    """A stand-in tokenizer: one token per character, so windows can be worked out by hand."""
    return len(text)


# ---------------------------------------------------------------- 1. positions -> offsets
POSITIONS = [
    # (id, text, line, character, encoding, offset)
    ("emoji-utf16-after", "a😀b", 0, 3, "utf-16", 2),
    ("emoji-utf16-inside-pair", "a😀b", 0, 2, "utf-16", 1),
    ("emoji-utf8-after", "a😀b", 0, 5, "utf-8", 2),
    ("emoji-utf8-inside", "a😀b", 0, 3, "utf-8", 1),
    ("emoji-utf32", "a😀b", 0, 2, "utf-32", 2),
    ("two-emoji-utf16", "😀😀x", 0, 4, "utf-16", 2),
    ("emoji-line2-utf8", 'x\ns = "😀"; t', 1, 11, "utf-8", 10),
    ("crlf-second-line", "x = 1\r\ny = 2\r\n", 1, 3, "utf-16", 10),
    ("crlf-clamp-before-cr", "x = 1\r\ny = 2", 0, 99, "utf-16", 5),
    ("lone-cr-break", "a\rb\nc", 1, 1, "utf-16", 3),
    ("line-past-end", "ab\ncd", 7, 0, "utf-16", 5),
    ("cjk-utf16", "名前 = 1", 0, 2, "utf-16", 2),
    ("cjk-utf8", "名前 = 1", 0, 6, "utf-8", 2),
    ("combining-utf16", "ce\u0301f", 0, 3, "utf-16", 3),
    ("combining-utf8", "ce\u0301f", 0, 4, "utf-8", 3),
    ("empty-last-line", "x\n", 1, 0, "utf-16", 2),
    ("empty-text", "", 0, 5, "utf-16", 0),
    ("u2028-is-not-a-break", "a\u2028b", 0, 2, "utf-16", 2),
]


@pytest.mark.parametrize("text,line,character,encoding,offset", [c[1:] for c in POSITIONS],
                         ids=[c[0] for c in POSITIONS])
def test_position_to_offset(text, line, character, encoding, offset):
    assert position_to_offset(text, line, character, encoding) == offset


OFFSETS = [
    # (id, text, offset, encoding, (line, character))
    ("emoji-utf16", "a😀b\r\nc", 2, "utf-16", (0, 3)),
    ("emoji-utf8", "a😀b\r\nc", 2, "utf-8", (0, 5)),
    ("between-cr-and-lf", "a😀b\r\nc", 4, "utf-16", (0, 4)),
    ("after-crlf", "a😀b\r\nc", 5, "utf-16", (1, 0)),
    ("cjk-utf8", "x\n名前", 4, "utf-8", (1, 6)),
]


@pytest.mark.parametrize("text,offset,encoding,position", [c[1:] for c in OFFSETS], ids=[c[0] for c in OFFSETS])
def test_offset_to_position(text, offset, encoding, position):
    assert offset_to_position(text, offset, encoding) == position


@pytest.mark.parametrize("line,character,encoding", [(-1, 0, "utf-16"), (0, -3, "utf-16"), (0, 1.5, "utf-16"),
                                                     (True, 0, "utf-16"), (0, 0, "latin-1")])
def test_invalid_positions_are_clear_errors(line, character, encoding):
    with pytest.raises(InvalidPosition):
        position_to_offset("abc", line, character, encoding)


def test_cursor_context_of_crlf_document():
    ctx = cursor_context("def f(x):\r\n    return (x)\r\n", 1, 13)
    assert ctx == CursorContext(prefix="def f(x):\r\n    return (x", suffix=")\r\n")
    assert (ctx.line_prefix, ctx.line_suffix, ctx.line, ctx.newline) == ("    return (x", ")", 1, "\r\n")


def test_cursor_context_emoji_before_cursor_utf8():
    ctx = cursor_context('print("😀 ok")', 0, 14, "utf-8")  # 7 + 4 + 3 bytes
    assert (ctx.prefix, ctx.suffix) == ('print("😀 ok', '")')


# ---------------------------------------------------------------- 2-3. prompts and their window
SPM_CTX = CursorContext(prefix="def add(a, b):\n    ", suffix="\n\nprint(add(1, 2))\n")
WINDOW_DOC = "".join(f"line{i:02d}".ljust(31, "-") + "\n" for i in range(14))  # 14 lines of 32 characters
WINDOW_SUFFIX = "rest\n" + "".join(f"s{i}".ljust(31, "-") + "\n" for i in range(10))
WINDOW_CONFIG = PromptConfig(chunk_lines=4, max_new_tokens=10, include_filename=False, neighbours=False)
HE_PREFIX = '    >>> strlen(\'abc\')\n    3\n    """\n'
HE_SUFFIX = "\n\ndef main():\n"

PROMPTS = [
    # (id, ctx, fim, n_ctx, config, path, snippets, expected Prompt)
    ("starcoder-spm-filename", SPM_CTX, STARCODER, 2048, PromptConfig(), "src/calc.py", (),
     Prompt(text="<filename>src/calc.py\n<fim_prefix><fim_suffix>\n\nprint(add(1, 2))\n<fim_middle>"
                 "def add(a, b):\n    ",
            mode="spm", prefix=SPM_CTX.prefix, suffix=SPM_CTX.suffix, prefix_start_line=0, chunk_lines=29)),
    ("starcoder-psm", SPM_CTX, STARCODER, 2048, PromptConfig(fim_mode="psm"), "src/calc.py", (),
     Prompt(text="<filename>src/calc.py\n<fim_prefix>def add(a, b):\n    <fim_suffix>\n\nprint(add(1, 2))\n"
                 "<fim_middle>",
            mode="psm", prefix=SPM_CTX.prefix, suffix=SPM_CTX.suffix, chunk_lines=29)),
    ("starcoder-no-filename", SPM_CTX, STARCODER, 2048, PromptConfig(include_filename=False), "src/calc.py", (),
     Prompt(text="<fim_prefix><fim_suffix>\n\nprint(add(1, 2))\n<fim_middle>def add(a, b):\n    ",
            mode="spm", prefix=SPM_CTX.prefix, suffix=SPM_CTX.suffix, chunk_lines=30)),
    ("santacoder-spm-hyphens", SPM_CTX, SANTACODER, 2048, PromptConfig(), "src/calc.py", (),
     Prompt(text="<fim-prefix><fim-suffix>\n\nprint(add(1, 2))\n<fim-middle>def add(a, b):\n    ",
            mode="spm", prefix=SPM_CTX.prefix, suffix=SPM_CTX.suffix, chunk_lines=30)),
    ("santacoder-psm", SPM_CTX, SANTACODER, 2048, PromptConfig(fim_mode="psm"), None, (),
     Prompt(text="<fim-prefix>def add(a, b):\n    <fim-suffix>\n\nprint(add(1, 2))\n<fim-middle>",
            mode="psm", prefix=SPM_CTX.prefix, suffix=SPM_CTX.suffix, chunk_lines=30)),
    ("no-fim-left-to-right", SPM_CTX, NO_FIM, 2048, PromptConfig(fim_mode="spm"), "src/calc.py", (),
     Prompt(text="def add(a, b):\n    ", mode="l2r", prefix=SPM_CTX.prefix, suffix="", note=NO_FIM_NOTE,
            chunk_lines=31)),
    # the head (77) runs into the prefix: one token of margin, 2048 - 64 - 78 = 1906 -> 29-line chunks
    ("no-fim-snippet-as-comments", SPM_CTX, NO_FIM, 2048, PromptConfig(), "src/calc.py",
     (Snippet("src/util.py", "def sub(a, b):\n    return a - b\n"),),
     Prompt(text="# Compare this snippet from src/util.py:\n# def sub(a, b):\n#     return a - b\ndef add(a, b):\n    ",
            mode="l2r", prefix=SPM_CTX.prefix, suffix="", note=NO_FIM_NOTE, snippets=1, chunk_lines=29)),
    ("starcoder-snippet-as-file", SPM_CTX, STARCODER, 2048, PromptConfig(), "src/calc.py",
     (Snippet("src/util.py", "def sub(a, b):\n    return a - b\n"),),
     Prompt(text="<filename>src/util.py\ndef sub(a, b):\n    return a - b\n<|endoftext|><filename>src/calc.py\n"
                 "<fim_prefix><fim_suffix>\n\nprint(add(1, 2))\n<fim_middle>def add(a, b):\n    ",
            mode="spm", prefix=SPM_CTX.prefix, suffix=SPM_CTX.suffix, snippets=1, chunk_lines=28)),
    ("santacoder-snippet-as-comments", SPM_CTX, SANTACODER, 2048, PromptConfig(), "src/calc.py",
     (Snippet("src/util.py", "def sub(a, b):\n    return a - b\n"),),
     Prompt(text="# Compare this snippet from src/util.py:\n# def sub(a, b):\n#     return a - b\n"
                 "<fim-prefix><fim-suffix>\n\nprint(add(1, 2))\n<fim-middle>def add(a, b):\n    ",
            mode="spm", prefix=SPM_CTX.prefix, suffix=SPM_CTX.suffix, snippets=1, chunk_lines=28)),
    ("js-snippet-uses-slashes", CursorContext("let x = ", ";\n"), SANTACODER, 2048, PromptConfig(), "app.js",
     (Snippet("lib.js", "export const y = 1;\n"),),
     Prompt(text="// Compare this snippet from lib.js:\n// export const y = 1;\n<fim-prefix><fim-suffix>;\n"
                 "<fim-middle>let x = ",
            mode="spm", prefix="let x = ", suffix=";\n", snippets=1, chunk_lines=29)),
    ("neighbours-off-drops-snippets", SPM_CTX, STARCODER, 2048, PromptConfig(neighbours=False), None,
     (Snippet("src/util.py", "def sub(a, b):\n    return a - b\n"),),
     Prompt(text="<fim_prefix><fim_suffix>\n\nprint(add(1, 2))\n<fim_middle>def add(a, b):\n    ",
            mode="spm", prefix=SPM_CTX.prefix, suffix=SPM_CTX.suffix, chunk_lines=30)),
    ("snippet-over-budget-dropped", SPM_CTX, STARCODER, 2048, PromptConfig(neighbour_tokens=20), None,
     (Snippet("src/util.py", "def sub(a, b):\n    return a - b\n"),),
     Prompt(text="<fim_prefix><fim_suffix>\n\nprint(add(1, 2))\n<fim_middle>def add(a, b):\n    ",
            mode="spm", prefix=SPM_CTX.prefix, suffix=SPM_CTX.suffix, chunk_lines=30)),
    # 446 tokens - 10 generated - 36 FIM = 400: the suffix gets 400/4 = 100 (two lines after "rest"
    # as a 4-line chunk would pass it: 69), the prefix 331 in 4-line chunks (331 // 64 >= 4): from
    # line 12 (67), 8 (+129), 4 (+129) = 325; line 0 would make 454.
    ("window-chunks", CursorContext(WINDOW_DOC + "cur", WINDOW_SUFFIX), SANTACODER, 446, WINDOW_CONFIG, None, (),
     Prompt(text="<fim-prefix><fim-suffix>" + WINDOW_SUFFIX[:69] + "<fim-middle>" + WINDOW_DOC[4 * 32 :] + "cur",
            mode="spm", prefix=WINDOW_DOC[4 * 32 :] + "cur", suffix=WINDOW_SUFFIX[:69], prefix_start_line=4,
            chunk_lines=4)),
    # nine more characters typed: 76 + 129 + 129 > 331, the window jumps a chunk
    ("window-jumps-a-chunk", CursorContext(WINDOW_DOC + "cur" + "X" * 9, WINDOW_SUFFIX), SANTACODER, 446,
     WINDOW_CONFIG, None, (),
     Prompt(text="<fim-prefix><fim-suffix>" + WINDOW_SUFFIX[:69] + "<fim-middle>" + WINDOW_DOC[8 * 32 :] + "cur"
                 + "X" * 9,
            mode="spm", prefix=WINDOW_DOC[8 * 32 :] + "cur" + "X" * 9, suffix=WINDOW_SUFFIX[:69], prefix_start_line=8,
            chunk_lines=4)),
    # a short suffix lends its unused share to the prefix: 400 - 4 = 396 >= 325 (without: 300 < 325)
    ("short-suffix-lends-budget", CursorContext(WINDOW_DOC + "cur", "end\n"), SANTACODER, 446, WINDOW_CONFIG, None, (),
     Prompt(text="<fim-prefix><fim-suffix>end\n<fim-middle>" + WINDOW_DOC[4 * 32 :] + "cur", mode="spm",
            prefix=WINDOW_DOC[4 * 32 :] + "cur", suffix="end\n", prefix_start_line=4, chunk_lines=4)),
    # a small window (60) moves by single lines: "cur" (3), line 13 (+33), line 12 would make 69
    ("small-window-single-lines", CursorContext(WINDOW_DOC + "cur", ""), SANTACODER, 106, WINDOW_CONFIG, None, (),
     Prompt(text="<fim-prefix><fim-suffix><fim-middle>" + WINDOW_DOC[13 * 32 :] + "cur", mode="spm",
            prefix=WINDOW_DOC[13 * 32 :] + "cur", suffix="", prefix_start_line=13, chunk_lines=1)),
    # one line longer than the budget (80): cut at a multiple of 64 code points from the line's start
    ("window-long-line", CursorContext("x" * 200, ""), SANTACODER, 126, WINDOW_CONFIG, None, (),
     Prompt(text="<fim-prefix><fim-suffix><fim-middle>" + "x" * 72, mode="spm", prefix="x" * 72, suffix="",
            prefix_start_line=0, chunk_lines=1)),
    ("crlf-and-emoji-kept-verbatim", CursorContext("s = '😀'\r\nt = ", "\r\n"), STARCODER, 2048,
     PromptConfig(include_filename=False), None, (),
     Prompt(text="<fim_prefix><fim_suffix>\r\n<fim_middle>s = '😀'\r\nt = ", mode="spm",
            prefix="s = '😀'\r\nt = ", suffix="\r\n", chunk_lines=30)),
    ("he-strlen-spm", CursorContext(HE_PREFIX, HE_SUFFIX), STARCODER, 2048, PromptConfig(), "strlen.py", (),
     Prompt(text="<filename>strlen.py\n<fim_prefix><fim_suffix>" + HE_SUFFIX + "<fim_middle>" + HE_PREFIX,
            mode="spm", prefix=HE_PREFIX, suffix=HE_SUFFIX, chunk_lines=29)),
]


@pytest.mark.parametrize("ctx,fim,n_ctx,config,path,snippets,expected", [c[1:] for c in PROMPTS],
                         ids=[c[0] for c in PROMPTS])
def test_build_prompt(ctx, fim, n_ctx, config, path, snippets, expected):
    assert build_prompt(ctx, fim, count_chars, n_ctx, config, path=path, snippets=snippets) == expected


def test_prompt_that_cannot_fit_is_a_clear_error():
    with pytest.raises(PromptDoesNotFit, match="max_new_tokens"):
        build_prompt(SPM_CTX, STARCODER, count_chars, 64, PromptConfig(max_new_tokens=64), None)


# ---------------------------------------------------------------- 4. notebooks
CELLS = [Cell("code", "import os"), Cell("markdown", "# Title\n\nSome *text*"), Cell("code", "x = 1\nprint(x)")]
NOTEBOOKS = [
    ("python", CELLS,
     ("# %%\nimport os\n# %% [markdown]\n# # Title\n#\n# Some *text*\n# %%\nx = 1\nprint(x)\n", [1, 3, 7])),
    ("javascript", [Cell("markdown", "Intro"), Cell("code", "let a = 1;")],
     ("// %% [markdown]\n// Intro\n// %%\nlet a = 1;\n", [1, 3])),
    ("r", [Cell("code", "a <- 1\r\nb <- 2"), Cell("code", "")], ("# %%\na <- 1\nb <- 2\n# %%\n\n", [1, 4])),
    ("python", [], ("", [])),
]


@pytest.mark.parametrize("language,cells,expected", NOTEBOOKS,
                         ids=["python", "javascript-markdown", "crlf-empty", "empty"])
def test_notebook_text(language, cells, expected):
    assert notebook_text(cells, language) == expected


CELL_POSITIONS = [
    ("code-cell", 2, 1, 3, (8, 3)),
    ("markdown-cell-shifted-by-comment", 1, 2, 2, (5, 4)),
    ("line-past-cell-end", 0, 5, 0, (1, 9)),
]


@pytest.mark.parametrize("cell,line,character,expected", [c[1:] for c in CELL_POSITIONS],
                         ids=[c[0] for c in CELL_POSITIONS])
def test_map_cell_position(cell, line, character, expected):
    assert map_cell_position(CELLS, "python", cell, line, character) == expected


def test_notebook_context_spans_all_cells():
    ctx = notebook_context(CELLS, "python", 2, 1, 6)
    assert ctx.prefix == "# %%\nimport os\n# %% [markdown]\n# # Title\n#\n# Some *text*\n# %%\nx = 1\nprint("
    assert ctx.suffix == "x)\n"


def test_cell_index_out_of_range_is_a_clear_error():
    with pytest.raises(IndexError, match="cell_index 3"):
        map_cell_position(CELLS, "python", 3, 0, 0)


# ---------------------------------------------------------------- 5. neighbour snippets
UTIL = "def parse_config(path):\n    with open(path) as handle:\n        return json.load(handle)\n"
OTHER = "class Renderer:\n    def draw(self, canvas):\n        canvas.fill(0)\n"
IO = "def read_config(config_path):\n    return open(config_path).read()\n"
AROUND = "config = parse_config(config_path)\nhandle = open(config_path)\n"


def test_snippet_chosen_by_similarity():
    assert select_snippets(AROUND, [("other.py", OTHER), ("util.py", UTIL)], 256, count_chars) == [
        Snippet("util.py", UTIL)]


def test_snippet_cut_to_budget_on_lines():
    # "util.py\n" (8) + the first line (24) = 32 <= 40; adding the second (31) would not fit
    assert select_snippets(AROUND, [("util.py", UTIL)], 40, count_chars) == [
        Snippet("util.py", "def parse_config(path):\n")]


def test_previous_snippets_kept_while_still_good():
    # util.py scores 3/8, io.py 2/7: not better by MATERIAL_GAIN, so the prompt's head stays put
    others = [("util.py", UTIL), ("io.py", IO)]
    assert select_snippets(AROUND, others, 256, count_chars) == [Snippet("util.py", UTIL), Snippet("io.py", IO)]
    previous = [Snippet("io.py", IO)]
    assert select_snippets(AROUND, others, 256, count_chars, previous=previous) == previous


def test_previous_snippets_replaced_when_their_document_changed():
    previous = [Snippet("util.py", "def old_parse_config(path):\n")]
    assert select_snippets(AROUND, [("util.py", UTIL)], 256, count_chars, previous=previous) == [
        Snippet("util.py", UTIL)]


def test_no_snippet_when_nothing_is_similar():
    assert select_snippets("zebra = giraffe()\n", [("other.py", OTHER)], 256, count_chars) == []


# ---------------------------------------------------------------- 6. post-processing
HE_L0_PREFIX = '    >>> has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3)\n    True\n    """\n\n'
HE_L0_SUFFIX = "        for idx2, elem2 in enumerate(numbers):\n            if idx != idx2:\n"
HE_L3_PREFIX = ("    for idx, elem in enumerate(numbers):\n        for idx2, elem2 in enumerate(numbers):\n"
                "            if idx != idx2:\n")
HE_L3_SUFFIX = "                if distance < threshold:\n                    return True\n\n    return False\n"
HE_78_PREFIX = "    primes = ('2', '3', '5', '7', 'B', 'D')\n"
HE_78_SUFFIX = ("    for i in range(0, len(num)):\n        if num[i] in primes:\n            total += 1\n"
                "    return total\n")
HE_119_PREFIX = "                return False\n        return True if val == 0 else False\n\n"
HE_119_SUFFIX = "    S2 = lst[1] + lst[0]\n    return 'Yes' if check(S1) or check(S2) else 'No'\n"
HE_9_PREFIX = '    [1, 2, 3, 3, 3, 4, 4]\n    """\n    running_max = None\n'
HE_9_SUFFIX = "\n    for n in numbers:\n        if running_max is None:\n"
HE_M5_PREFIX = '    >>> has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3)\n    True\n    """\n\n'
HE_M5_SUFFIX = "\n    return False\n"
HE_M5_MIDDLE = ("    for idx, elem in enumerate(numbers):\n        for idx2, elem2 in enumerate(numbers):\n"
                "            if idx != idx2:\n                distance = abs(elem - elem2)\n"
                "                if distance < threshold:\n                    return True\n")
HE_M33_PREFIX = "    ['()', '(())', '(()())']\n    \"\"\"\n\n"
HE_M33_SUFFIX = "            current_string.append(c)\n        elif c == ')':\n"
HE_M33_MIDDLE = ("    result = []\n    current_string = []\n    current_depth = 0\n\n    for c in paren_string:\n"
                 "        if c == '(':\n            current_depth += 1\n")
HE_M700_PREFIX = ("    while i <= int(math.sqrt(n) + 1):\n        if n % i == 0:\n            fact.append(i)\n"
                  "            n //= i\n")
HE_M700_SUFFIX = "\n    if n > 1:\n        fact.append(n)\n    return fact\n"
HE_M700_MIDDLE = "        else:\n            i += 1\n"

AUTO = PostprocessConfig()
ALWAYS = PostprocessConfig(multiline="always")
FIB_RAW = ("if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n\n\n"
           "def main():\n    print(fib(10))")

POSTPROCESS = [
    # (id, prefix, suffix, raw, config, expected)
    ("stop-token", "x = ", "\n", "compute(1)<|endoftext|>garbage", AUTO, Suggestion("compute(1)")),
    ("stop-string", "def f():\n    ", "", "return 1\ndef g():\n    pass", PostprocessConfig(stop_strings=("\ndef ",)),
     Suggestion("return 1")),
    ("fim-token-ends-middle", "x = ", "\n", "1<fim_prefix>y = 2", AUTO, Suggestion("1")),
    ("mid-line-single-line", "total = price * ", " + tax\n", "quantity + tax\nprint(total)", AUTO,
     Suggestion("quantity")),
    ("mid-line-drops-retyped-colon", "if ", ":\n    pass\n", "x > 0:\n    return x", AUTO, Suggestion("x > 0")),
    ("mid-line-keeps-space-before-suffix", "return ", "b\n", "a + ", AUTO, Suggestion("a + ")),
    ("closing-paren-replaced", "print(", ")\n", '"hello")\nprint(2)', AUTO, Suggestion('"hello")', 1)),
    ("closing-quote-replaced", 'name = "', '"\n', 'world"\n', AUTO, Suggestion('world"', 1)),
    ("two-closers-replaced", "result = max(len(", "))\n", "items), 1)\n", AUTO, Suggestion("items), 1)", 2)),
    ("closer-then-semicolon", "foo(", ");\n", "a);", AUTO, Suggestion("a)", 1)),
    ("inner-closer-replaced", "f(a, g(", "), b)\n", "x)", AUTO, Suggestion("x)", 1)),
    ("only-the-closer-is-none", "print(", ")\n", ")\nprint(2)", AUTO, None),
    ("brace-closer-replaced", "const point = {", "}\n", " x: 1, y: 2 }", AUTO, Suggestion(" x: 1, y: 2 }", 1)),
    ("suggestion-without-closer", "print(", ")\n", '"hello"', AUTO, Suggestion('"hello"')),
    ("emoji-string-closers", 'print("😀 ', '")\n', 'happy")', AUTO, Suggestion('happy")', 2)),
    ("mismatched-closer-cut", "x = [", "]\n", "1, 2)\n", AUTO, Suggestion("1, 2")),
    ("closer-with-nothing-open-cut", "x = 1\n", "", "y = 2)", AUTO, Suggestion("y = 2")),
    ("own-bracket-closed-mid-line", "print(", ")\n", "compute(a, b", AUTO, Suggestion("compute(a, b)")),
    ("own-brackets-balanced-kept", "print(", ")\n", "f(x)", AUTO, Suggestion("f(x)")),
    ("block-after-opener-empty-line", "def area(r):\n    ", "\n\nprint(area(2))\n",
     "return 3.14 * r * r\n\nprint(area(2))\n", AUTO, Suggestion("return 3.14 * r * r")),
    ("block-indentation-scope", "def fib(n):\n    ", "", FIB_RAW, AUTO,
     Suggestion("if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)")),
    ("block-never", "def fib(n):\n    ", "", FIB_RAW, PostprocessConfig(multiline="never"), Suggestion("if n < 2:")),
    ("block-max-lines", "def fib(n):\n    ", "", FIB_RAW, PostprocessConfig(max_lines=2),
     Suggestion("if n < 2:\n        return n")),
    ("block-at-end-of-opener-line", "for item in items:", "\n", "\n    total += item\nprint(total)", AUTO,
     Suggestion("\n    total += item")),
    ("nested-scope-ends-at-sibling", "class A:\n    def f(self):\n        ", "",
     "return 1\n\n    def g(self):\n        return 2", AUTO, Suggestion("return 1")),
    ("brace-block-closer-in-suffix", "function add(a, b) {\n  ", "\n}\n",
     "return a + b;\n}\n\nfunction sub(a, b) {", AUTO, Suggestion("return a + b;")),
    ("brace-block-closer-supplied", "function add(a, b) {\n  ", "",
     "return a + b;\n}\n\nfunction sub(a, b) {", AUTO, Suggestion("return a + b;\n}")),
    ("call-arguments-block", "result = compute(", "\n", "\n    first,\n    second,\n)\nprint(result)", AUTO,
     Suggestion("\n    first,\n    second,\n)")),
    ("always-on-plain-line", "x = 1\n", "\nprint(x)\n", "y = 2\nz = 3\nprint(x)\n", ALWAYS, Suggestion("y = 2\nz = 3")),
    ("auto-on-plain-line-is-one-line", "x = 1\n", "\nprint(x)\n", "y = 2\nz = 3\nprint(x)\n", AUTO,
     Suggestion("y = 2")),
    ("next-line-after-line-end", "x = 1", "\n", "\ny = 2\nz = 3", AUTO, Suggestion("\ny = 2")),
    ("repeated-lines-dropped", "def f():\n    ", "", "x = 1\n    x = 1\n    x = 1", AUTO, Suggestion("x = 1")),
    ("repeat-of-line-above-is-none", "    total = 0\n    ", "\n", "total = 0\n", AUTO, None),
    ("repeat-of-line-above-block-is-none", "    total = 0\n    ", "\n", "total = 0\n    total = 0\n", ALWAYS, None),
    ("suffix-line-not-retyped", "def f():\n    a = 1\n    ", "\n    return a\n", "b = 2\n    return a\n", ALWAYS,
     Suggestion("b = 2")),
    ("retyping-next-line-is-none", "def f():\n    a = 1\n    ", "\n    return a\n", "return a\n", AUTO, None),
    ("trailing-whitespace-line-end", "x = ", "\n", "compute()   \n", AUTO, Suggestion("compute()")),
    ("trailing-whitespace-block", "if ok:\n    ", "", "a = 1  \n    b = 2\t\n", AUTO, Suggestion("a = 1\n    b = 2")),
    ("whitespace-only-is-none", "x = ", "\n", "   \n\n", AUTO, None),
    ("empty-is-none", "x = ", "\n", "<|endoftext|>", AUTO, None),
    ("crlf-document-gets-crlf", "def f():\r\n    ", "\r\n", "a = 1\r\n    return a\r\n", AUTO,
     Suggestion("a = 1\r\n    return a")),
    ("he-single-L0-line-inserted", HE_L0_PREFIX, HE_L0_SUFFIX,
     "    for idx, elem in enumerate(numbers):\n" + HE_L0_SUFFIX,
     AUTO, Suggestion("    for idx, elem in enumerate(numbers):\n")),
    ("he-single-L3", HE_L3_PREFIX, HE_L3_SUFFIX, "                distance = abs(elem - elem2)\n" + HE_L3_SUFFIX,
     AUTO, Suggestion("                distance = abs(elem - elem2)\n")),
    ("he-single-78", HE_78_PREFIX, HE_78_SUFFIX, "    total = 0\n" + HE_78_SUFFIX + "<|endoftext|>", AUTO,
     Suggestion("    total = 0\n")),
    ("he-single-119", HE_119_PREFIX, HE_119_SUFFIX, "    S1 = lst[0] + lst[1]\n" + HE_119_SUFFIX, AUTO,
     Suggestion("    S1 = lst[0] + lst[1]\n")),
    ("he-single-9-empty-line", HE_9_PREFIX, HE_9_SUFFIX, "    result = []\n" + HE_9_SUFFIX, AUTO,
     Suggestion("    result = []")),
    ("he-multi-5-block", HE_M5_PREFIX, HE_M5_SUFFIX, HE_M5_MIDDLE + HE_M5_SUFFIX, ALWAYS,
     Suggestion(HE_M5_MIDDLE.rstrip("\n"))),
    ("he-multi-33-lines-inserted", HE_M33_PREFIX, HE_M33_SUFFIX, HE_M33_MIDDLE + HE_M33_SUFFIX, ALWAYS,
     Suggestion(HE_M33_MIDDLE)),
    ("he-multi-700-dedent", HE_M700_PREFIX, HE_M700_SUFFIX, HE_M700_MIDDLE + HE_M700_SUFFIX, ALWAYS,
     Suggestion(HE_M700_MIDDLE.rstrip("\n"))),
]


@pytest.mark.parametrize("prefix,suffix,raw,config,expected", [c[1:] for c in POSTPROCESS],
                         ids=[c[0] for c in POSTPROCESS])
def test_postprocess(prefix, suffix, raw, config, expected):
    assert postprocess(raw, CursorContext(prefix, suffix), config, STOPS) == expected


# ---------------------------------------------------------------- 7. forward-typing reuse
SHOWN_CALL = ShownSuggestion(prefix="print(", suffix=")\n", suggestion=Suggestion('"hello")', 1))
SHOWN_BLOCK = ShownSuggestion(prefix="def f():\n    ", suffix="", suggestion=Suggestion("a = 1\n    return a"))
REUSE = [
    ("asked-again-unchanged", SHOWN_CALL, "print(", ")\n", SHOWN_CALL.suggestion),
    ("typed-first-chars", SHOWN_CALL, 'print("h', ")\n", Suggestion('ello")', 1)),
    ("auto-closed-quote-replaced-too", SHOWN_CALL, 'print("', '")\n', Suggestion('hello")', 2)),
    ("typed-something-else", SHOWN_CALL, "print(x", ")\n", None),
    ("typed-it-all", SHOWN_CALL, 'print("hello")', ")\n", None),
    ("only-the-closer-left", SHOWN_CALL, 'print("hello"', ")\n", None),
    ("deleted-a-char", SHOWN_CALL, "print", ")\n", None),
    ("suffix-changed", SHOWN_CALL, 'print("h', ", 2)\n", None),
    ("typed-across-a-line-break", SHOWN_BLOCK, "def f():\n    a = 1\n    ", "", Suggestion("return a")),
]


@pytest.mark.parametrize("shown,prefix,suffix,expected", [c[1:] for c in REUSE], ids=[c[0] for c in REUSE])
def test_reuse_suggestion(shown, prefix, suffix, expected):
    assert reuse_suggestion(shown, CursorContext(prefix, suffix)) == expected


def test_golden_tables_hold_at_least_sixty_cases():
    tables = (POSITIONS, OFFSETS, PROMPTS, NOTEBOOKS, CELL_POSITIONS, POSTPROCESS, REUSE)
    assert sum(len(t) for t in tables) >= 60
