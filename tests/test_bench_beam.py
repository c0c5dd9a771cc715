"""`fim-lsp bench beam` on the tiny kit model: both tables are filled from real runs."""
import json
import subprocess
import sys

import pytest
import torch

from benchmarks.beam import LINE_TOKENS, WIDTHS, line_table, step_table
from engine.backends.torch_backend import TorchBackend
from engine.cache import CacheConfig
from engine.loading import load_model
from fim_lsp.evaluation.evaluate import load_problems
from tests.conftest import kit

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_step_and_line_tables_come_from_runs_of_each_width():
    loaded = load_model(str(kit(shape="tiny")), torch.device("cpu"), torch.float32)
    steps = step_table(loaded.model, context=64, repeats=3)
    assert [row["rows"] for row in steps] == [0, *WIDTHS] and steps[0]["x_greedy"] == 1.0
    assert all(row["ms"] > 0 for row in steps)
    backend = TorchBackend(loaded, CacheConfig(budget_bytes=64 * 2**20))
    lines = line_table(backend, load_problems("single-line", limit=3), widths=(1, 3))
    assert [row["beam"] for row in lines] == [1, 3] and lines[0]["x_greedy"] == 1.0
    for row in lines:
        assert 0 < row["tokens"] <= LINE_TOKENS and 0 < row["forwards"] <= LINE_TOKENS
        assert row["p95_ms"] >= row["p50_ms"] > 0
    assert backend.cache_stats()["slots"] == 0  # each hole's document was dropped


def test_the_command_prints_its_json(tmp_path):
    out = subprocess.run([sys.executable, "-m", "fim_lsp.cli", "bench", "beam", "--shape", "tiny", "--problems", "2",
                          "--context", "32", "--threads", "1", "--json"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["context"] == 32 and [row["beam"] for row in report["lines"]] == list(WIDTHS)
