"""`fim-lsp complete`: real suggestions at code-point positions, and one clear line for bad input."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lsp_server import pipeline
from fim_lsp.cli import main
from fim_lsp.complete import prompt_path
from lsp_server.documents import uri_to_path
from lsp_server.config import CompletionSettings, ModelConfig

SOURCE = "# café ☕ menu\ndef price(item):\n    return PRICES[item] * \n\nprint(price('tea'))\n"
KEYS = {"text", "raw", "prompt", "prompt_tokens", "prefill_tokens", "reused_tokens", "generated_tokens",
        "latency_ms", "device", "dtype"}


def test_json_output_at_two_positions_matches_the_pipeline(tmp_path, tiny_starcoder):
    source = tmp_path / "menu.py"
    source.write_bytes(SOURCE.encode("utf-8"))
    run = subprocess.run(
        [sys.executable, "-m", "fim_lsp.cli", "complete", "--model", str(tiny_starcoder), "--dtype", "float32",
         str(source), "--line", "2", "--character", "25", "--line", "0", "--character", "12",
         "--max-new-tokens", "8", "--json"],
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [json.loads(line) for line in run.stdout.splitlines()]
    assert [(r["line"], r["character"]) for r in rows] == [(2, 25), (0, 12)]

    engine = pipeline.load_model(ModelConfig(model=str(tiny_starcoder), dtype="float32"))
    config = pipeline.pipeline_config(CompletionSettings(max_new_tokens=8))
    for row in rows:
        assert KEYS <= row.keys()
        assert (row["device"], row["dtype"]) == ("cpu", "float32")
        # characters are code points: (0, 12) sits after "# café ☕ men", whatever the encoding's units
        outcome = pipeline.complete(engine, str(source), SOURCE, row["line"], row["character"], encoding="utf-32",
                                    config=config, path="menu.py")  # outside a repository and the cwd: its name
        assert row["prompt"] == outcome.prompt.text
        assert row["raw"] == outcome.raw
        assert row["text"] == (outcome.suggestion.text if outcome.suggestion else "")
        assert row["prompt_tokens"] == outcome.result.prompt_tokens
        assert row["generated_tokens"] == len(outcome.result.token_ids) <= 8
        assert row["min_token_probability"] == pytest.approx(outcome.confidence, rel=1e-5)
        # a small model: a beam of 3, which returns the lines it finished by the time it settled
        assert row["beam"] == outcome.beam and 1 <= outcome.beam <= 3
    assert rows[1]["prompt"].endswith("# café ☕ men")  # SPM: the prefix ends the prompt


def test_the_cli_names_a_file_as_the_server_names_it(tmp_path):
    """Relative to the enclosing git repository (the workspace folder an editor opens), else to the
    current directory, else by its name: the `<filename>` the server's prompt carries."""
    repo = tmp_path / "shop"
    (repo / ".git").mkdir(parents=True)
    (repo / "src" / "menu").mkdir(parents=True)
    file = repo / "src" / "menu" / "prices.py"
    file.write_text("x = 1\n")
    server_name = uri_to_path(file.as_uri(), [repo.as_uri()])
    assert server_name == "src/menu/prices.py"
    assert prompt_path(file, cwd=tmp_path) == server_name  # the repository wins over a cwd above it
    assert prompt_path(file, cwd=repo / "src") == "menu/prices.py"  # a folder inside it is the innermost root
    loose = tmp_path / "notes" / "todo.py"
    loose.parent.mkdir()
    loose.write_text("")
    assert prompt_path(loose, cwd=tmp_path) == "notes/todo.py"
    assert prompt_path(loose, cwd=repo) == "todo.py"


def broken_copy(tmp_path: Path, model: Path, edit) -> Path:
    out = tmp_path / "broken"
    shutil.copytree(model, out)
    edit(out)
    return out


def other_model_type(path: Path) -> None:
    config = json.loads((path / "config.json").read_text())
    config["model_type"] = "llama"
    (path / "config.json").write_text(json.dumps(config))


def no_fim_tokens(path: Path) -> None:
    tokenizer = json.loads((path / "tokenizer.json").read_text())
    tokenizer["added_tokens"] = [t for t in tokenizer["added_tokens"] if not t["content"].startswith("<fim")]
    (path / "tokenizer.json").write_text(json.dumps(tokenizer))


@pytest.mark.parametrize("case, expected", [
    ("missing model directory", "cannot load the model"),
    ("another model_type", "llama"),
    ("tokenizer without FIM tokens", "has no fill-in-the-middle tokens"),
    ("missing source file", "no such file"),
    ("unpaired positions", "give --line and --character the same number of times"),
    ("negative position", "cannot be negative"),
])
def test_bad_input_is_one_clear_line_and_a_non_zero_exit(case, expected, tmp_path, tiny_starcoder, capsys):
    source = tmp_path / "a.py"
    source.write_text("x = 1\n")
    model, positions = str(tiny_starcoder), ["--line", "0", "--character", "0"]
    if case == "missing model directory":
        model = str(tmp_path / "no-such-model")
    elif case == "another model_type":
        model = str(broken_copy(tmp_path, tiny_starcoder, other_model_type))
    elif case == "tokenizer without FIM tokens":
        model = str(broken_copy(tmp_path, tiny_starcoder, no_fim_tokens))
    elif case == "missing source file":
        source = tmp_path / "missing.py"
    elif case == "unpaired positions":
        positions = ["--line", "0", "--line", "1", "--character", "0"]
    elif case == "negative position":
        positions = ["--line", "-1", "--character", "0"]
    code = main(["complete", "--model", model, "--dtype", "float32", str(source), *positions, "--json"])
    out, err = capsys.readouterr()
    assert code != 0 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fim-lsp complete: "), err
    assert expected in lines[0] and "Traceback" not in err
