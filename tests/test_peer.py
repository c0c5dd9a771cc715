"""`fim-lsp bench peer` on the tiny kit model: GGUF conversions (and llama.cpp's 4-bit quantisations)
cached by checkpoint hash, llama.cpp fed our token ids decodes as our engine does, its prefix reuse
evaluates only the new tokens; the rows are asked in ABBA order, one request at a time; the
per-pass ratios, medians and spreads are computed as documented; a real interleaved run fills
every row; a missing llama-cpp-python is explained.

Needs llama-cpp-python (./dev test installs it) and its source distribution's converter.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
import shutil

import pytest
import torch

from benchmarks import gguf as gguf_module
from benchmarks import peer
from benchmarks.gguf import cached_gguf_path, describe_report, ensure_gguf, fallbacks, quantize_report
from benchmarks.keystroke_replay import load_problems
from benchmarks.peer import (
    DEFAULT_ROWS, OURS, PEERS, Bench, Keystroke, LlamaCppBackend, Row, main, parse_rows, time_llama,
)
from benchmarks.peer_summary import FIGURES, RowRun, format_table, summarize
from benchmarks.peer_workers import RowFailed, RowWorker, one_line, round_order
from engine.api import CompletionRequest, DocId
from engine.backends.torch_backend import TorchBackend
from engine.loading import CheckpointError, load_model
from engine.model import KVBuffer
from engine.onnx_format import checkpoint_hash
from fim_lsp.cli import build_parser
from lsp_server.core.context import CursorContext
from lsp_server.core.prompt import PromptConfig, build_prompt

pytestmark = pytest.mark.llamacpp
N_CTX = 512  # the tiny shape's window
# f16 rounds weights by up to 2^-11 relative; through the tiny model's 2 layers that moves logits
# by ~1e-3 (std ~1.5). llama.cpp may pick another token only where our top two are that close:
# over 20 HumanEval prompts x 16 tokens one step differed, with a top-2 gap of 0.001.
NEAR_TIE = 0.01  # of the logits' standard deviation
COLUMNS = (*FIGURES, "weight_bytes", "floor_s", "decode_over_floor")
FILE_TYPE = {"f16": 1, "q8_0": 7, "q4_0": 2, "q4_k_m": 15}  # GGUF general.file_type (llama_ftype)


@pytest.fixture(scope="module")
def f16(tiny_starcoder):
    return ensure_gguf(tiny_starcoder, "f16")


@pytest.fixture(scope="module")
def ours(tiny_starcoder):
    return TorchBackend(load_model(str(tiny_starcoder), torch.device("cpu"), torch.float32))


def prompts(backend, n: int) -> list[str]:
    """FIM prompts of the first n HumanEval problems, as the language server builds them."""
    config = PromptConfig(max_new_tokens=16, neighbours=False)
    return [build_prompt(CursorContext(prefix=p.prefix, suffix=p.suffix), backend.fim, backend.count_tokens,
                         256 + 16, config).text for p in load_problems(n)]


def file_type(path) -> int:
    """GGUF `general.file_type` (FILE_TYPE), read by llama.cpp itself."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    return int(llm.metadata["general.file_type"])


def test_conversion_is_made_once_per_checkpoint_hash(tiny_starcoder, tmp_path, monkeypatch):
    out = ensure_gguf(tiny_starcoder, "q8_0", cache_dir=tmp_path)
    digest = checkpoint_hash(tiny_starcoder)
    assert out == tmp_path / f"{tiny_starcoder.name}-{digest[:16]}-q8_0.gguf"
    assert out.read_bytes()[:4] == b"GGUF"
    assert file_type(out) == FILE_TYPE["q8_0"]
    assert not list(tmp_path.glob("*.partial")), "the temporary file was renamed into place"

    def no_conversion(*args, **kwargs):
        raise AssertionError("a cached conversion was converted again")

    monkeypatch.setattr(gguf_module.subprocess, "run", no_conversion)
    assert ensure_gguf(tiny_starcoder, "q8_0", cache_dir=tmp_path) == out

    changed = tmp_path / "changed"
    shutil.copytree(tiny_starcoder, changed)
    with open(changed / "config.json", "a", encoding="utf-8") as f:
        f.write("\n")
    assert cached_gguf_path(changed, "q8_0", checkpoint_hash(changed), tmp_path).name != out.name


def test_f16_conversion_is_f16(f16):
    assert file_type(f16) == FILE_TYPE["f16"]


def test_greedy_tokens_agree_with_ours_but_at_near_ties(ours, f16):
    peer = LlamaCppBackend(f16, ours.tokenizer, n_ctx=N_CTX, threads=1)
    identical = 0
    texts = prompts(ours, 12)
    for i, prompt in enumerate(texts):
        request = CompletionRequest(doc_id=DocId(f"p{i}"), prompt=prompt, max_new_tokens=16)
        a, b = ours.complete(request).token_ids, peer.complete(request).token_ids
        identical += a == b
        if a == b:
            continue
        k = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        ids = ours.tokenizer.encode(prompt) + a[:k]
        kv = KVBuffer(ours.model.args, len(ids), torch.float32, torch.device("cpu"))
        with torch.inference_mode():
            logits = ours.model(torch.tensor(ids), torch.arange(len(ids)), kv, 0, last_only=True)[0]  # [V]
        top = torch.topk(logits, 2).values
        assert top[0] - top[1] < NEAR_TIE * logits.std(), (
            f"prompt {i}: llama.cpp chose {b[k:k + 1]} over our {a[k]} where ours leads by {top[0] - top[1]:.4f}")
    assert identical >= 10, f"only {identical}/12 greedy sequences equal ours"


def test_prefix_reuse_evaluates_only_new_tokens(ours, f16):
    peer = LlamaCppBackend(f16, ours.tokenizer, n_ctx=N_CTX, threads=1)
    ids = ours.tokenizer.encode(prompts(ours, 1)[0])
    timing = time_llama(peer, ids)
    assert timing["plus_one_evaluated"] == 1

    problem = load_problems(1)[0]
    config = PromptConfig(max_new_tokens=8, neighbours=False)
    results = []
    for typed in ("", problem.middle[:1]):
        ctx = CursorContext(prefix=problem.prefix + typed, suffix=problem.suffix)
        prompt = build_prompt(ctx, ours.fim, ours.count_tokens, 256 + 8, config).text
        before = peer.decoded
        result = peer.complete(CompletionRequest(doc_id=DocId("d"), prompt=prompt, max_new_tokens=8))
        results.append(result)
        fed_back = max(result.generated_tokens - 1, 0)  # the last sampled token is never evaluated
        assert peer.decoded - before == result.prefill_tokens + fed_back, "reported reuse is what llama.cpp did"
    assert results[1].prefill_tokens <= 3 < results[1].prompt_tokens, "a keystroke evaluates only its new tokens"


# -- the schedule: every request through every row, one at a time, ABBA order --------------------

def test_round_order_alternates_so_every_row_sits_at_the_same_mean_position():
    rows = ["a", "b", "c"]
    assert [round_order(rows, i) for i in range(4)] == [["a", "b", "c"], ["c", "b", "a"]] * 2
    positions = {r: sum(round_order(rows, i).index(r) for i in range(2)) for r in rows}
    assert set(positions.values()) == {2}


class FakeWorker:
    """Stands for a row's worker process: logs each command, answers with fixed figures."""

    def __init__(self, mode: str, log: list, latency: float, fail_on: int | None = None):
        self.mode, self.log, self.latency, self.fail_on = mode, log, latency, fail_on
        self.described = {"why": f"fake {mode}", "weight_bytes": 10**9, "load_s": 0.0, "quantization": None}
        self.completes = 0

    def call(self, command, argument=None):
        self.log.append((self.mode, command, getattr(argument, "prompt", argument)))
        if command == "time":
            return {"prefill_s": 1.0, "plus_one_s": 0.1, "decode_s": 0.05, "plus_one_evaluated": 1}
        if command == "complete":
            self.completes += 1
            if self.completes == self.fail_on:
                raise RowFailed("worker died (exit code -11, a crash)")
            return {"latency_s": self.latency * self.completes, "prefill_tokens": 1, "token_ids": [self.completes]}
        assert command == "drop", command
        return None

    def stop(self):
        return {"idle_cpu_s": 0.0}


def fake_bench(monkeypatch, latencies: dict[str, float], fail: dict[str, int] | None = None):
    log: list = []
    workers = {m: FakeWorker(m, log, t, (fail or {}).get(m)) for m, t in latencies.items()}
    monkeypatch.setattr(peer, "start_row", lambda row, say: workers[row.mode])
    rows = [Row(m, "ckpt", None, 8, 1) for m in latencies]
    return Bench(rows, say=lambda msg: None), log


def typing(*docs: tuple[str, int]) -> list[Keystroke]:
    """Keystrokes of documents (name, keys): a cold first request, then one per key; prompts name both."""
    return [Keystroke(CompletionRequest(doc_id=DocId(doc), prompt=f"{doc}{k}", max_new_tokens=8),
                      warm=k > 0, last=k == keys)
            for doc, keys in docs for k in range(keys + 1)]


def test_every_request_goes_through_every_row_in_abba_order_one_at_a_time(monkeypatch):
    bench, log = fake_bench(monkeypatch, {"torch int8": 0.1, "llama.cpp q8_0": 0.2})
    A, B = "torch int8", "llama.cpp q8_0"
    keys = typing(("x", 1), ("y", 1))
    bench.run_pass(0, keys)
    bench.run_pass(1, keys)
    expected = [(A, "time", None), (B, "time", None),
                (A, "complete", "x0"), (B, "complete", "x0"),
                (B, "complete", "x1"), (B, "drop", "x"), (A, "complete", "x1"), (A, "drop", "x"),
                (A, "complete", "y0"), (B, "complete", "y0"),
                (B, "complete", "y1"), (B, "drop", "y"), (A, "complete", "y1"), (A, "drop", "y"),
                (B, "time", None), (A, "time", None),  # the second pass times in the other order
                (A, "complete", "x0"), (B, "complete", "x0"),
                (B, "complete", "x1"), (B, "drop", "x"), (A, "complete", "x1"), (A, "drop", "x"),
                (A, "complete", "y0"), (B, "complete", "y0"),
                (B, "complete", "y1"), (B, "drop", "y"), (A, "complete", "y1"), (A, "drop", "y")]
    assert log == expected
    run = bench.runs[A]
    assert len(run.passes) == 2
    # warm requests only: the 2nd and 4th completes of pass 1 (latency 0.1 x the count so far)
    assert run.passes[0]["keystroke_p50_s"] == pytest.approx((0.2 + 0.4) / 2)
    assert run.passes[0]["keystrokes"] == 2
    assert run.passes[1]["keystroke_p50_s"] == pytest.approx((0.6 + 0.8) / 2)
    assert run.tokens == [[1], [2], [3], [4]], "the first pass's tokens, cold requests included"


def test_a_row_that_fails_mid_pass_is_dropped_and_the_others_go_on(monkeypatch):
    bench, log = fake_bench(monkeypatch, {"torch int8": 0.1, "llama.cpp q8_0": 0.2}, fail={"torch int8": 2})
    bench.run_pass(0, typing(("x", 2)))
    assert bench.runs["torch int8"].error == "pass 1: worker died (exit code -11, a crash)"
    assert list(bench.workers) == ["llama.cpp q8_0"]
    assert [e for e in log if e[0] == "torch int8"][-1] == ("torch int8", "complete", "x1")
    assert len(bench.runs["llama.cpp q8_0"].passes) == 1
    summary = summarize(list(bench.runs.values()), [1e10])
    assert summary["failed"] == {"torch int8": "pass 1: worker died (exit code -11, a crash)"}
    assert "keystroke_p50_ratio_vs_llamacpp_q8_0" not in summary


def test_a_worker_that_cannot_load_or_dies_is_one_line_not_a_crash():
    with pytest.raises(RowFailed, match=r"^ValueError: invalid literal for int\(\) with base 10: 'x'$"):
        RowWorker("bad", int, "x")  # int("x") in the worker: a row whose load raises
    with pytest.raises(RowFailed, match=r"^worker died \(exit code 3\)$"):
        RowWorker("dies", os._exit, 3)  # a worker that exits while loading (llama.cpp's segfaults are this)
    assert one_line(CheckpointError("--dtype 'int4': choose one\n  more | detail")) == (
        "CheckpointError: --dtype 'int4': choose one")


# -- the arithmetic: medians over passes, ratios within a pass ------------------------------------

def fake_run(mode: str, p50: list[float], decode: list[float] | None = None) -> RowRun:
    passes = [{"prefill_s": 2.0 + i, "plus_one_s": 0.1, "decode_s": (decode or [0.05] * len(p50))[i],
               "plus_one_evaluated": 1, "keystroke_p50_s": t, "keystroke_p95_s": 2 * t, "keystrokes": 12,
               "keystroke_prefill_median": 1} for i, t in enumerate(p50)]
    return RowRun(mode, why=f"fake {mode}", weight_bytes=10**9, passes=passes, tokens=[[1, 2], [3, 4]])


def test_ratios_are_taken_within_each_pass_then_summarised_by_median_and_min_max():
    runs = [fake_run("torch int8", [0.30, 0.50, 0.36], decode=[0.05, 0.06, 0.07]),
            fake_run("torch bf16", [0.90, 0.90, 0.90]),
            RowRun("torch int4", error="CheckpointError: --dtype 'int4': choose one of [...]"),
            fake_run("llama.cpp q8_0", [0.40, 0.40, 0.30]),
            fake_run("llama.cpp Q4_K_M", [0.30, 0.25, 0.40])]
    summary = summarize(runs, [20e9, 30e9, 25e9])
    rows = {r["mode"]: r for r in summary["rows"]}
    int8 = rows["torch int8"]
    assert int8["keystroke_p50_s"] == pytest.approx(0.36)
    assert (int8["keystroke_p50_s_min"], int8["keystroke_p50_s_max"]) == (0.30, 0.50)
    assert int8["prefill_s"] == 3.0 and int8["prefill_s_min"] == 2.0 and int8["prefill_s_max"] == 4.0
    assert int8["ratio_vs_llamacpp_q8_0_passes"] == pytest.approx([0.75, 1.25, 1.2])
    assert int8["ratio_vs_llamacpp_q8_0"] == pytest.approx(1.2)  # not 0.36 / 0.40, the ratio of medians
    assert int8["ratio_vs_llamacpp_q8_0_min"] == pytest.approx(0.75)
    assert int8["ratio_vs_llamacpp_q8_0_max"] == pytest.approx(1.25)
    assert int8["ratio_vs_llamacpp_q4_k_m_passes"] == pytest.approx([1.0, 2.0, 0.9])
    assert int8["floor_s"] == pytest.approx(1e9 / 25e9)  # the median bandwidth
    assert int8["decode_over_floor"] == pytest.approx(0.06 / 0.04)
    assert "ratio_vs_llamacpp_q8_0" not in rows["llama.cpp Q4_K_M"], "peer rows carry no ratio"
    assert rows["torch int4"] == {"mode": "torch int4", "why": "",
                                  "error": "CheckpointError: --dtype 'int4': choose one of [...]"}
    assert summary["fastest_ours"] == "torch int8"
    assert summary["keystroke_p50_ratio_vs_llamacpp_q8_0"] == pytest.approx(1.2)
    assert summary["keystroke_p50_ratio_vs_llamacpp_q8_0_max"] == pytest.approx(1.25)
    assert summary["keystroke_p50_ratio_vs_llamacpp_q4_k_m"] == pytest.approx(1.0)
    assert summary["torch_int8_decode_over_floor"] == pytest.approx(1.5)
    assert summary["bandwidth_gb_s"] == pytest.approx(25.0)
    assert set(summary) == {
        "rows", "passes", "bandwidth_gb_s", "bandwidth_gb_s_passes", "failed", "fastest_ours",
        "keystroke_p50_ratio_vs_llamacpp_q8_0", "keystroke_p50_ratio_vs_llamacpp_q8_0_min",
        "keystroke_p50_ratio_vs_llamacpp_q8_0_max", "keystroke_p50_ratio_vs_llamacpp_q4_k_m",
        "keystroke_p50_ratio_vs_llamacpp_q4_k_m_min", "keystroke_p50_ratio_vs_llamacpp_q4_k_m_max",
        "torch_int8_decode_over_floor"}
    assert summary["passes"] == 3 and summary["failed"] == {"torch int4": rows["torch int4"]["error"]}
    table = format_table(summary).splitlines()
    assert len(table) == 2 + len(runs) and len({line.count("|") for line in table}) == 1
    assert "| torch int8 | 3 | 0.1 | 0.06 | 0.36 [0.3-0.5] | 0.72 | 1.20 [0.75-1.25] | 1.00 [0.90-2.00] |" in table[2]
    assert table[4].startswith("| torch int4 | not run: CheckpointError: --dtype 'int4'")


def test_rows_default_to_the_comparison_and_unknown_ones_are_named():
    assert parse_rows(None) == DEFAULT_ROWS == ("torch int8", "torch int4", *PEERS)
    assert PEERS == ("llama.cpp f16", "llama.cpp q8_0", "llama.cpp Q4_0", "llama.cpp Q4_K_M")
    assert parse_rows(" torch int8, llama.cpp Q4_K_M ") == ("torch int8", "llama.cpp Q4_K_M")
    with pytest.raises(ValueError, match=r"unknown rows \['torch int3'\]; the rows are .*llama.cpp Q4_K_M"):
        parse_rows("torch int3,llama.cpp q8_0")


def test_quantiser_fallbacks_are_read_from_its_log():
    log = ("[  8/  28] blk.0.attn_output.weight - [64, 64, 1, 1], type = f16, converting to q5_0 .. size = 0.01 MiB\n"
           "warning: blk.0.attn_output.weight             - ncols     64 not divisible by 256 (required for type"
           "    q4_K) -> falling back to    q5_0\n")
    assert fallbacks(log) == [{"tensor": "blk.0.attn_output.weight", "ncols": 64, "block": 256,
                               "wanted": "q4_K", "got": "q5_0"}]
    report = {"ftype": "q4_k_m", "source_type": "f16", "tensor_types": {"F32": 3, "Q4_K": 2, "Q5_0": 1},
              "fallbacks": fallbacks(log)}
    assert describe_report(report) == "q4_k_m from f16: F32 3, Q4_K 2, Q5_0 1; 1 of 6 tensors fell back (q4_K->q5_0 x1)"


# -- one real interleaved run ---------------------------------------------------------------------

def engine_takes_int4() -> bool:
    from engine.select import choose_placement

    try:
        choose_placement("cpu", "int4")
    except CheckpointError:
        return False
    return True


def test_interleaved_run_fills_every_row_over_three_passes(tiny_starcoder, capsys):
    args = build_parser().parse_args(["bench", "peer", "--shape", "tiny", "--problems", "1", "--max-keys", "2",
                                      "--threads", "1", "--passes", "3", "--json", "--rows", ",".join(OURS + PEERS)])
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    rows = {r["mode"]: r for r in summary["rows"]}
    assert list(rows) == [*OURS, *PEERS]
    assert summary["passes"] == 3 and len(summary["bandwidth_gb_s_passes"]) == 3
    int4 = "torch int4"
    if not engine_takes_int4():  # until the engine has --dtype int4 the row says why, in one line
        assert "\n" not in rows[int4]["error"] and "int4" in rows[int4]["error"]
        assert summary["failed"] == {int4: rows[int4]["error"]}
    else:
        assert summary["failed"] == {}
    for mode, row in rows.items():
        if mode == int4 and not engine_takes_int4():
            continue
        assert len(row["passes"]) == 3, mode
        for column in COLUMNS:
            assert row[column] > 0, f"{mode}: {column} = {row[column]}"
        assert row["plus_one_evaluated"] == 1, mode
        assert row["keystrokes"] == 2, mode
        assert row["floor_s"] == pytest.approx(row["weight_bytes"] / (summary["bandwidth_gb_s"] * 1e9))
        if mode in OURS:
            assert len(row["ratio_vs_llamacpp_q8_0_passes"]) == 3 and row["ratio_vs_llamacpp_q4_k_m"] > 0, mode
    ours = [m for m in OURS if "error" not in rows[m]]
    fastest = min(ours, key=lambda m: rows[m]["keystroke_p50_s"])
    assert summary["fastest_ours"] == fastest
    assert summary["keystroke_p50_ratio_vs_llamacpp_q8_0"] == rows[fastest]["ratio_vs_llamacpp_q8_0"]
    assert summary["keystroke_p50_ratio_vs_llamacpp_q8_0_max"] == rows[fastest]["ratio_vs_llamacpp_q8_0_max"]
    assert summary["keystroke_p50_ratio_vs_llamacpp_q4_k_m"] == rows[fastest]["ratio_vs_llamacpp_q4_k_m"]
    assert summary["torch_int8_decode_over_floor"] == rows["torch int8"]["decode_over_floor"]
    # a step reads every int8 matrix (packed for FBGEMM or not) but only rows of the two embedding tables
    from engine.loading import read_config
    from engine.quantize import int8_weight_bytes

    model_args = read_config(Path(summary["model"])).args
    tables = (model_args.vocab_size + model_args.n_positions) * model_args.n_embd * 2  # bf16
    assert rows["torch int8"]["weight_bytes"] == int8_weight_bytes(model_args) - tables
    # llama.cpp's quantiser made the 4-bit files; on the tiny shape (64 wide) no row is a multiple of
    # 256, so K-quants fall back for those tensors, and the report says so
    for outtype in ("q4_0", "q4_k_m"):
        path = ensure_gguf(tiny_starcoder, outtype)
        assert file_type(path) == FILE_TYPE[outtype]
    report = quantize_report(ensure_gguf(tiny_starcoder, "q4_k_m"))
    assert report["tensor_types"].get("Q4_K", 0) >= 1
    assert report["fallbacks"]
    assert all(f["ncols"] % 256 and f["wanted"] in ("q4_K", "q6_K") for f in report["fallbacks"])
    assert rows["llama.cpp Q4_K_M"]["quantization"] == describe_report(report)


def test_missing_llama_cpp_says_how_to_install(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    args = build_parser().parse_args(["bench", "peer", "--shape", "tiny"])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "llama-cpp-python is not installed" in err
    assert 'pip install --find-links ~/.cache/fim-lsp/wheels "llama-cpp-python==0.3.36"' in err


def test_unknown_rows_are_refused_with_the_choices(capsys):
    args = build_parser().parse_args(["bench", "peer", "--shape", "tiny", "--rows", "torch int3"])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "unknown rows ['torch int3']" in err and "llama.cpp Q4_K_M" in err
