"""`fim-lsp demo`: the typing replay through the real server prints a row per key and a summary."""
from __future__ import annotations

import re
import subprocess
import sys

from fim_lsp.demo import SAMPLE, one_line, typing_span


def test_typing_span_starts_at_a_def_past_the_middle():
    text = SAMPLE.read_text()
    start, end = typing_span(text, 12)
    assert text[start:end] == "def remove(s"
    assert typing_span("x = 1\n", 100) == (3, 6)  # no def: from the middle, cut at the end


def test_one_line_marks_line_breaks_and_cuts():
    assert one_line("a\nb") == "a⏎b"
    assert one_line("x" * 80, width=10) == "x" * 9 + "…"


def test_demo_replays_keys_through_the_server(tiny_starcoder):
    run = subprocess.run(
        [sys.executable, "-m", "fim_lsp.cli", "demo", "--model", str(tiny_starcoder), "--dtype", "float32",
         "--keys", "3"],
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [line for line in run.stdout.splitlines() if re.match(r"^\s+'.'\s", line)]
    assert [row.split()[0] for row in rows] == ["'d'", "'e'", "'f'"]
    prefilled = [row.split()[2] for row in rows]
    first_prefill, prompt_tokens = map(int, prefilled[0].split("/"))
    assert first_prefill == prompt_tokens > 50  # the first request computes its whole prompt
    for later in prefilled[1:]:  # every later key reuses the cache (or the suggestion already shown)
        assert later == "reused" or int(later.split("/")[0]) <= 8, prefilled
    assert re.search(r"^3 keystrokes: latency p50 [\d.]+ ms", run.stdout, re.MULTILINE), run.stdout
