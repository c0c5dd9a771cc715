"""`fim-lsp eval`: exact-match scoring, the product path it runs through, and the sandbox."""
from __future__ import annotations

import json

import pytest

from engine.api import through_line_end, BackendInfo, CompletionRequest, CompletionResult
from fim_lsp.training.checkpoint_kit import STARCODER_SPECIALS
from engine.fim import fim_tokens_from_vocab
from fim_lsp import cli
from fim_lsp.evaluation.evaluate import (
    Problem, cursor_of, evaluate, exact_match, load_problems, program_for,
)
from fim_lsp.evaluation.sandbox import SandboxLimits, run_program

PROBLEM = Problem(
    task_id="Test/0",
    entry_point="add",
    prompt='def add(a, b):\n    """Sum of a and b."""\n',
    suffix="    return total\n",
    canonical_solution="    total = a + b\n",
    test="def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
)


class ScriptedBackend:
    """A backend double that answers each prompt with a fixed generation (for scoring tests)."""

    ranks_first_token = False  # one answer a prompt: no alternatives
    searches_lines = False

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers  # a text the prompt must contain -> the raw generation
        self.fim = fim_tokens_from_vocab(STARCODER_SPECIALS)
        self.info = BackendInfo(backend="scripted", model="scripted", device="cpu", dtype="float32", n_ctx=2048)
        self.prompts: list[str] = []
        self.stop_strings: list[tuple[str, ...]] = []
        self.line_ends: list[bool] = []
        self.dropped: list[str] = []

    def count_tokens(self, text: str) -> int:
        return len(text) // 3 + 1

    def complete(self, request: CompletionRequest, cancel=None) -> CompletionResult:
        self.prompts.append(request.prompt)
        self.stop_strings.append(request.stop_strings)
        self.line_ends.append(request.stop_at_line_end)
        text = next(raw for key, raw in self.answers.items() if key in request.prompt)
        ends = [text.find(s) + len(s) for s in request.stop_strings if s in text]
        text = text[: min(ends)] if ends else text  # as the engine: the stop string's token is kept
        line = through_line_end(text) if request.stop_at_line_end else None
        text = text if line is None else text[:line]
        return CompletionResult(text=text, token_ids=[], stop_reason="eos", prompt_tokens=1, reused_tokens=0,
                                prefill_tokens=1, generated_tokens=1, latency_ms=1.0)

    def drop(self, doc_id) -> None:
        self.dropped.append(doc_id)

    def cache_stats(self) -> dict[str, int]:
        return {}


@pytest.mark.parametrize("middle, canonical, expected", [
    ("    total = a + b\n", "    total = a + b\n", True),
    ("total = a + b", "    total = a + b\n", True),  # whitespace around the middle does not count
    ("    total = a - b\n", "    total = a + b\n", False),
    ("    total = a  + b\n", "    total = a + b\n", False),  # inner whitespace does
    ("", "    total = a + b\n", False),
])
def test_exact_match_strips_only_the_ends(middle, canonical, expected):
    assert exact_match(middle, canonical) is expected


def test_cursor_of_counts_code_points():
    assert cursor_of("def f():\n    x = 'é😀'") == (1, 12)
    assert cursor_of("a\nb\n") == (2, 0)


def test_problems_load_with_all_fields():
    single = load_problems("single-line")
    multi = load_problems("multi-line", limit=5)
    assert len(single) == 1033 and len(multi) == 5
    assert single[0].task_id == "SingleLineInfilling/HumanEval/0/L0"
    assert all(p.canonical_solution.endswith("\n") for p in single[:50])
    with pytest.raises(ValueError, match="positive"):
        load_problems("single-line", limit=0)


def test_the_idioms_are_whole_python_and_an_oracle_scores_all_of_them():
    import ast

    idioms = load_problems("idioms")
    assert len(idioms) >= 30 and len({p.task_id for p in idioms}) == len(idioms)
    for p in idioms:
        ast.parse(p.prompt + p.canonical_solution + p.suffix)  # raises on a malformed idiom
        assert "\n" not in p.canonical_solution.strip(), f"{p.task_id}: an idiom is one line"
    oracle = ScriptedBackend({f"<fim_middle>{p.prompt}": p.canonical_solution + "\n" for p in idioms})
    report = evaluate(oracle, idioms, "idioms")
    assert report.exact_matches == len(idioms), [r.task_id for r in report.results if not r.exact]


def test_idioms_have_no_tests_to_run(capsys):
    assert cli.main(["eval", "--benchmark", "idioms", "--pass-at-1"]) == 2
    assert "no tests" in capsys.readouterr().err


def test_evaluate_scores_a_right_and_a_wrong_middle_through_the_pipeline():
    wrong = Problem("Test/1", "add", PROBLEM.prompt.replace("Sum", "Total"), PROBLEM.suffix,
                    PROBLEM.canonical_solution, PROBLEM.test)
    backend = ScriptedBackend({"Sum of": "    total = a + b\n<|endoftext|>", "Total of": "    total = a * b\n"})
    report = evaluate(backend, [PROBLEM, wrong], "single-line", pass_at_1=True)
    assert [r.exact for r in report.results] == [True, False]
    assert [r.passed for r in report.results] == [True, False]
    assert report.exact_matches == 1 and report.exact_match == 0.5 and report.pass_at_1 == 0.5
    assert "AssertionError" in report.results[1].detail
    # the prompt is SPM: suffix first, then the prefix the model continues
    assert backend.prompts[0] == f"<fim_prefix><fim_suffix>{PROBLEM.suffix}<fim_middle>{PROBLEM.prompt}"
    assert backend.dropped == ["Test/0", "Test/1"]
    assert backend.line_ends == [True, True]  # single-line decoding ends at the line break
    summary = report.summary()
    assert {k: summary[k] for k in ("benchmark", "problems", "exact_match", "pass_at_1")} == {
        "benchmark": "single-line", "problems": 2, "exact_match": 0.5, "pass_at_1": 0.5}


def test_single_line_keeps_one_line_and_multi_line_keeps_the_block():
    raw = "    total = a + b\n    total += 0\n"
    single = evaluate(ScriptedBackend({"": raw}), [PROBLEM], "single-line")
    multi_problem = Problem("Test/2", "add", PROBLEM.prompt, PROBLEM.suffix, raw, PROBLEM.test)
    multi = evaluate(ScriptedBackend({"": raw}), [multi_problem], "multi-line")
    assert single.results[0].middle.strip() == "total = a + b"
    assert single.exact_matches == 1
    assert multi.results[0].middle.strip() == raw.strip()
    assert multi.exact_matches == 1


@pytest.mark.parametrize("raw", [
    "    total = a + b\n    total += 0\n",
    "    total = a + b",
    "    total = a + b\n",
    "\n    total = a + b\n",
    "    total = (a +\n b)\n",
])
def test_one_line_benchmarks_stop_decoding_at_the_line_end_and_keep_the_suggestion(raw):
    from dataclasses import replace

    from fim_lsp.evaluation.evaluate import complete_problem, pipeline_config_for

    class WholeGeneration(ScriptedBackend):
        """Decodes on past the line end, as a block request would."""

        def complete(self, request, cancel=None):
            return super().complete(replace(request, stop_at_line_end=False), cancel)

    config = pipeline_config_for("single-line", 64)
    scripted = ScriptedBackend({"": raw})
    first_line, _, _, _ = complete_problem(scripted, PROBLEM, config)
    assert scripted.line_ends == [True]
    full, _, _, _ = complete_problem(WholeGeneration({"": raw}), PROBLEM, config)
    assert first_line == full
    assert pipeline_config_for("multi-line", 64).postprocess.multiline == "always"  # blocks decode on


def test_program_for_joins_code_tests_and_check():
    assert program_for(PROBLEM, "    total = a + b\n").endswith("\n\ncheck(add)\n")
    assert run_program(program_for(PROBLEM, "    total = a + b\n")).passed


def test_sandbox_reports_a_failing_program():
    result = run_program("assert 1 + 1 == 3, 'arithmetic'\n")
    assert result.status == "failed" and result.returncode == 1
    assert result.detail == "AssertionError: arithmetic"


def test_sandbox_kills_an_infinite_loop_at_the_timeout():
    # the CPU limit is far away (it only ends a hang): the wall-clock timer must be what killed it
    result = run_program("while True:\n    pass\n", SandboxLimits(timeout_s=1.0, cpu_s=120))
    assert result.status == "timeout" and not result.passed
    assert (result.returncode, result.detail) == (None, "killed after 1 s")


@pytest.mark.parametrize("attempt", [
    "import socket\nsocket.create_connection(('127.0.0.1', 9))\n",
    "import socket\nsocket.socket()\n",
    "import subprocess\nsubprocess.run(['true'])\n",
    "import os\nos.system('true')\n",
])
def test_sandbox_refuses_sockets_and_processes(attempt):
    result = run_program(attempt)
    assert result.status == "failed"
    assert result.detail.startswith("PermissionError: sandbox:")


def test_sandbox_runs_isolated_in_an_empty_temp_dir():
    result = run_program("import os, sys\nassert os.listdir('.') == ['program.py', 'runner.py'] or "
                         "sorted(os.listdir('.')) == ['program.py', 'runner.py']\nassert 'HOME' not in os.environ\n"
                         "assert sys.flags.isolated == 1\n")
    assert result.passed, result.detail


def test_cli_eval_json_on_a_kit_checkpoint(tiny_starcoder, capsys):
    code = cli.main(["eval", "--model", str(tiny_starcoder), "--benchmark", "single-line", "--limit", "2",
                     "--max-new-tokens", "8", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    summary = json.loads(out.out)
    assert summary["benchmark"] == "single-line" and summary["problems"] == 2
    assert 0.0 <= summary["exact_match"] <= 1.0 and "pass_at_1" not in summary
    assert summary["model"] == str(tiny_starcoder)
    assert "eval single-line" in out.err  # the progress bar


def test_cli_eval_says_how_many_lines_each_one_line_suggestion_took(tiny_starcoder, capsys):
    base = ["eval", "--model", str(tiny_starcoder), "--limit", "2", "--max-new-tokens", "8", "--json"]
    summaries = {}
    for name, extra in {"auto": [], "one": ["--beam", "1"], "block": ["--benchmark", "multi-line"]}.items():
        assert cli.main([*base, *extra]) == 0
        summaries[name] = json.loads(capsys.readouterr().out)
    # the kit model is small (auto beam); a block suggestion compares one line
    assert [summaries[k]["beam"] for k in ("auto", "one", "block")] == [3, 1, 1]
    assert cli.main([*base, "--beam", "0"]) == 2
    assert "beam must be between 1 and 8, got 0" in capsys.readouterr().err


def test_cli_eval_results_file_has_each_problems_suggestion(tiny_starcoder, tmp_path, capsys):
    results = tmp_path / "results.jsonl"
    code = cli.main(["eval", "--model", str(tiny_starcoder), "--benchmark", "idioms", "--limit", "3",
                     "--max-new-tokens", "6", "--json", "--results", str(results)])
    out = capsys.readouterr()
    assert code == 0, out.err
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["task_id"] for r in rows] == [p.task_id for p in load_problems("idioms", limit=3)]
    assert all(isinstance(r["middle"], str) and r["exact"] == exact_match(r["middle"], p.canonical_solution)
               for r, p in zip(rows, load_problems("idioms", limit=3)))
    assert sum(r["exact"] for r in rows) == json.loads(out.out)["exact_matches"]


def test_cli_eval_hides_suggestions_the_model_was_unsure_of(tiny_starcoder, tmp_path, capsys):
    # one branch: each problem has one candidate, so the threshold decides exactly which are shown
    args = ["eval", "--model", str(tiny_starcoder), "--benchmark", "idioms", "--limit", "12",
            "--max-new-tokens", "6", "--beam", "1", "--json", "--results"]
    assert cli.main([*args, str(tmp_path / "all.jsonl")]) == 0
    everything = json.loads(capsys.readouterr().out)
    rows = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()]
    scored = sorted({r["confidence"] for r in rows if r["middle"]})
    assert everything["shown"] == sum(1 for r in rows if r["middle"]) and len(scored) >= 2
    threshold = (scored[len(scored) // 2 - 1] + scored[len(scored) // 2]) / 2  # between two suggestions' figures
    assert cli.main([*args, str(tmp_path / "some.jsonl"), "--min-token-probability", str(threshold)]) == 0
    some = json.loads(capsys.readouterr().out)
    kept = [json.loads(line) for line in (tmp_path / "some.jsonl").read_text().splitlines()]
    assert [r["middle"] for r in kept] == [r["middle"] if r["confidence"] > threshold else "" for r in rows]
    assert some["shown"] < everything["shown"] and some["min_token_probability"] == threshold
    assert cli.main([*args, str(tmp_path / "x.jsonl"), "--min-token-probability", "1"]) == 2
    assert "--min-token-probability must be >= 0 and < 1" in capsys.readouterr().err


def test_cli_eval_results_file_that_cannot_be_written_is_one_line(tiny_starcoder, tmp_path, capsys):
    code = cli.main(["eval", "--model", str(tiny_starcoder), "--benchmark", "idioms", "--limit", "1",
                     "--max-new-tokens", "4", "--results", str(tmp_path / "no-such-dir" / "r.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and err.startswith("fim-lsp eval: cannot write --results")


def test_cli_eval_missing_model_is_one_line(tmp_path, capsys):
    code = cli.main(["eval", "--model", str(tmp_path / "nope"), "--limit", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("fim-lsp eval: cannot load the model") and "\n" not in err


def test_a_backend_without_fim_tokens_is_refused_with_a_reason():
    from lsp_server.pipeline import missing_fim

    backend = ScriptedBackend({})
    assert missing_fim(backend, "x") is None
    backend.fim = fim_tokens_from_vocab(["<|endoftext|>", "def"])
    assert "has no fill-in-the-middle tokens" in missing_fim(backend, "x")
