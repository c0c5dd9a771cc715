"""A short soak (`fim-lsp bench soak` with few edits, tiny models): no crash, no desync, RSS within
the budget, a model reload midway, a table and a real PNG plot."""
from __future__ import annotations

import argparse
import json
import struct

from benchmarks import soak
from fim_lsp.cli import build_parser


def test_a_short_soak_has_no_crash_no_desync_and_stays_within_its_memory_budget(tmp_path, capsys):
    plot = tmp_path / "soak.png"
    args = build_parser().parse_args(["bench", "soak", "--shape", "tiny", "--edits", "240", "--docs", "5",
                                      "--cache-mib", "16", "--plot", str(plot), "--json"])
    assert soak.main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["crashes"], summary["desyncs"], summary["errors"]) == (0, 0, 0)
    assert summary["rss_peak_mib"] <= summary["budget_mib"]
    assert summary["models"][0] != summary["models"][1], "the reload swaps in another checkpoint"
    [row] = summary["rows"]
    assert row["edits"] == 240 and row["completions"] > 30 and 0 < row["cancelled"] < row["completions"]
    assert 0 < row["p50_ms"] <= row["p95_ms"] and 0 < row["kv_mib"] <= 16

    png = plot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (800, 700) and len(png) > 20_000, "a drawn figure, not an empty image"


def test_a_desync_is_detected_and_counted(tmp_path):
    """The check itself: a client copy that differs from the server's is reported."""

    class Client:
        def texts(self, uris):
            return {uri: "server text" for uri in uris}

    run = soak.Soak(argparse.Namespace(seed=0), "m", "m", 1, say=lambda msg: None)
    run.client = Client()
    run.docs = [soak.Doc("file:///a.py", "server text", 0), soak.Doc("file:///b.py", "client text", 0)]
    assert run.check([0, 1]) == 1


def test_utf16_positions_count_lines_and_units_as_lsp_does():
    text = "a😀b\r\nc\rd\ne"
    assert [soak.utf16_position(text, o) for o in (3, 5, 6, 7, 9)] == [
        {"line": 0, "character": 4}, {"line": 1, "character": 0}, {"line": 1, "character": 1},
        {"line": 2, "character": 0}, {"line": 3, "character": 0}]
    assert soak.snap(text, 4) == 3, "never between \\r and \\n"
