"""`fim-lsp bench peer` on the tiny kit model: GGUF conversions cached by checkpoint hash, llama.cpp
fed our token ids decodes as our engine does, its prefix reuse evaluates only the new tokens, the
table carries every column, and a missing llama-cpp-python is explained.

Needs llama-cpp-python (./dev test installs it) and its source distribution's converter.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
import shutil

import pytest
import torch

from benchmarks import gguf as gguf_module
from benchmarks.gguf import cached_gguf_path, ensure_gguf
from benchmarks.keystroke_replay import load_problems
from benchmarks.peer import OURS, PEERS, LlamaCppBackend, format_table, main, time_llama
from engine.api import CompletionRequest, DocId
from engine.backends.torch_backend import TorchBackend
from engine.loading import load_model
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
COLUMNS = ("prefill_s", "plus_one_s", "decode_s", "keystroke_p50_s", "keystroke_p95_s", "weight_bytes", "floor_s")


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
    """GGUF `general.file_type` (1: mostly f16, 7: mostly q8_0), read by llama.cpp itself."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    return int(llm.metadata["general.file_type"])


def test_conversion_is_made_once_per_checkpoint_hash(tiny_starcoder, tmp_path, monkeypatch):
    out = ensure_gguf(tiny_starcoder, "q8_0", cache_dir=tmp_path)
    digest = checkpoint_hash(tiny_starcoder)
    assert out == tmp_path / f"{tiny_starcoder.name}-{digest[:16]}-q8_0.gguf"
    assert out.read_bytes()[:4] == b"GGUF"
    assert file_type(out) == 7
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
    assert file_type(f16) == 1


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


def test_table_has_every_column(capsys):
    args = build_parser().parse_args(["bench", "peer", "--shape", "tiny", "--problems", "1", "--max-keys", "2",
                                      "--threads", "1", "--json"])
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    rows = {r["mode"]: r for r in summary["rows"]}
    assert list(rows) == [*OURS, *PEERS]
    for mode, row in rows.items():
        for column in COLUMNS:
            assert row[column] > 0, f"{mode}: {column} = {row[column]}"
        assert row["plus_one_evaluated"] == 1, mode
        assert row["floor_s"] == pytest.approx(row["weight_bytes"] / (summary["bandwidth_gb_s"] * 1e9))
    fastest = min(OURS, key=lambda m: rows[m]["keystroke_p50_s"])
    assert summary["fastest_ours"] == fastest
    assert summary["keystroke_p50_ratio_vs_llamacpp_q8_0"] == pytest.approx(
        rows[fastest]["keystroke_p50_s"] / rows["llama.cpp q8_0"]["keystroke_p50_s"])
    table = format_table(summary["rows"]).splitlines()
    assert len(table) == 2 + len(rows) and all(line.count("|") == 10 for line in table)


def test_missing_llama_cpp_says_how_to_install(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    args = build_parser().parse_args(["bench", "peer", "--shape", "tiny"])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "llama-cpp-python is not installed" in err
    assert 'pip install --find-links ~/.cache/fim-lsp/wheels "llama-cpp-python==0.3.36"' in err


def test_rows_picks_the_rows_to_run_and_names_the_choices_when_one_is_unknown(capsys):
    args = build_parser().parse_args(["bench", "peer", "--shape", "tiny", "--problems", "1", "--max-keys", "2",
                                      "--threads", "1", "--json", "--rows", "torch int8, llama.cpp q8_0"])
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [r["mode"] for r in summary["rows"]] == ["torch int8", "llama.cpp q8_0"]
    assert summary["fastest_ours"] == "torch int8"
    # a step reads every int8 matrix (packed for FBGEMM or not) but only rows of the two embedding tables
    from engine.loading import read_config
    from engine.quantize import int8_weight_bytes

    args = read_config(Path(summary["model"])).args
    tables = (args.vocab_size + args.n_positions) * args.n_embd * 2  # bf16
    assert summary["rows"][0]["weight_bytes"] == int8_weight_bytes(args) - tables
    args = build_parser().parse_args(["bench", "peer", "--shape", "tiny", "--rows", "torch int4"])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "unknown rows ['torch int4']" in err and "llama.cpp q8_0" in err
