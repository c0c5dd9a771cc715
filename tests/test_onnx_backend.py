"""The ONNX Runtime backend: the torch backend's tokens over a typing replay, the same cache life
cycle, and selection that falls back to torch on the CPU instead of failing."""
import shutil
import sys

import pytest
import torch

from benchmarks.keystroke_replay import load_problems, replay
from engine.api import CompletionRequest, DocId
from engine.backends.onnx_backend import OnnxBackend, OnnxConfig, OnnxUnavailable, load_onnx_backend
from engine.backends.torch_backend import TorchBackend
from engine.cache import CacheConfig
from engine.loading import load_model
from engine.onnx_format import FP32_FILE, MANIFEST, Manifest, checkpoint_hash
from engine import hardware
from engine.select import load_backend
from tests.conftest import kit

CPU = torch.device("cpu")
MAX_KEYS = 12  # typed characters per problem: enough to exercise reuse, bounded for CI


@pytest.fixture(scope="module")
def torch_fp32():
    return load_model(str(kit(shape="tiny", family="starcoder")), CPU, torch.float32)


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def prompt(backend, prefix: str, suffix: str = "\n") -> str:
    f = backend.fim
    return f"{f.prefix}{prefix}{f.suffix}{suffix}{f.middle}"


def test_greedy_tokens_equal_torch_fp32_at_every_keystroke_of_20_problems(tiny_onnx, torch_fp32):
    ort = load_onnx_backend(str(tiny_onnx), dtype="float32", cache=CacheConfig(budget_bytes=64 * 2**20))
    assert (ort.info.backend, ort.info.dtype) == ("onnx", "float32")
    modes = {"torch": TorchBackend(torch_fp32, CacheConfig(budget_bytes=64 * 2**20)), "onnx": ort}
    problems = load_problems(20)
    n_ctx = torch_fp32.model.args.n_positions
    torch_run, ort_run = replay(problems, modes, n_ctx=n_ctx, max_new_tokens=8, max_keys=MAX_KEYS)
    assert len(ort_run.samples) == sum(min(len(p.middle), MAX_KEYS) + 1 for p in problems)
    for k, (a, b) in enumerate(zip(torch_run.samples, ort_run.samples)):
        assert a.token_ids == b.token_ids, f"keystroke {k}: torch {a.token_ids} != onnx {b.token_ids}"
        assert (a.prompt_tokens, a.reused_tokens) == (b.prompt_tokens, b.reused_tokens), "same cache decisions"
    assert sum(s.reused_tokens for s in ort_run.samples) > 0.9 * sum(s.prompt_tokens for s in ort_run.samples)


def test_a_beam_search_finds_the_torch_backends_lines_and_leaves_the_slot_as_the_prompt(tiny_onnx, torch_fp32):
    ort = load_onnx_backend(str(tiny_onnx), dtype="float32", cache=CacheConfig(budget_bytes=64 * 2**20))
    local = TorchBackend(torch_fp32, CacheConfig(budget_bytes=64 * 2**20))
    assert ort.searches_lines
    for i, text in enumerate(["def add(a, b):\n    return ", "import os\n\nclass Reader:\n    def __init__(self",
                              "values = [1, 2, 3]\ntotal = "]):
        lines = []
        for backend in (local, ort):  # the random-weight model rarely ends a line: stop strings end some
            result = backend.complete(CompletionRequest(DocId(f"b{i}"), prompt(backend, text), max_new_tokens=6,
                                                        stop_at_line_end=True, stop_strings=(")", " "), beam=3,
                                                        heal=True))
            lines.append([(r.token_ids, r.score) for r in [result, *result.other_lines]])
        assert len(lines[1]) >= 2
        assert [ids for ids, _ in lines[1]] == [ids for ids, _ in lines[0]]
        assert [score for _, score in lines[1]] == pytest.approx([score for _, score in lines[0]], abs=1e-3)
        assert ort.slot_tokens(DocId(f"b{i}")) == local.slot_tokens(DocId(f"b{i}"))
        assert ort.buffers[DocId(f"b{i}")].length == len(ort.slot_tokens(DocId(f"b{i}")))
    again = ort.complete(CompletionRequest(DocId("b0"), prompt(ort, "def add(a, b):\n    return a"), max_new_tokens=6))
    fresh = TorchBackend(torch_fp32, CacheConfig(budget_bytes=64 * 2**20)).complete(
        CompletionRequest(DocId("f"), prompt(ort, "def add(a, b):\n    return a"), max_new_tokens=6))
    assert again.reused_tokens > 0 and again.token_ids == fresh.token_ids  # the next keystroke is exact


def test_seeding_eviction_and_drop_keep_tokens_equal_a_full_recompute(tiny_onnx, torch_fp32):
    slot_bytes = 256 * torch_fp32.model.args.kv_bytes_per_token(4)  # one 256-position chunk, fp32
    cache = CacheConfig(budget_bytes=2 * slot_bytes, block_size=16)
    ort = load_onnx_backend(str(tiny_onnx), dtype="float32", cache=cache)
    recompute = TorchBackend(torch_fp32, CacheConfig(budget_bytes=2**26, reuse=False))
    header = "# Licensed under the Apache License, Version 2.0 (the 'License');\nimport os\nimport sys\n\n"
    requests = [("a", header + "def alpha("), ("b", header + "def beta("), ("a", header + "def alpha(x"),
                ("c", header + "class Gamma:"), ("a", header + "def alpha(x, y")]
    for doc, text in requests:
        request = CompletionRequest(DocId(doc), prompt(ort, text), max_new_tokens=6)
        got, want = ort.complete(request), recompute.complete(request)
        assert got.token_ids == want.token_ids, f"{doc}: {got.token_ids} != {want.token_ids}"
    stats = ort.cache_stats()
    assert stats["seeded_tokens"] > 0, "b and c start with a's header: copied, not prefilled"
    assert stats["evictions"] > 0 and stats["slots"] <= 2, "the budget holds two slots"
    assert 0 < stats["bytes"] <= stats["budget_bytes"]
    ort.drop(DocId("a"))
    assert ort.slot_tokens(DocId("a")) == []


def test_int8_graph_is_chosen_by_default_and_says_so(tiny_onnx):
    ort = load_onnx_backend(str(tiny_onnx))
    assert isinstance(ort, OnnxBackend) and ort.info.dtype == "int8"
    assert "int8 weights" in ort.info.why and "greedy agreement" in ort.info.why
    result = ort.complete(CompletionRequest(DocId("x"), prompt(ort, "def f("), max_new_tokens=5))
    assert result.generated_tokens == len(result.token_ids) > 0


def test_auto_picks_onnx_when_an_export_exists_and_torch_when_none(tiny_onnx, no_gpu, tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "cpu_has_int8", lambda: False)  # else torch's int8 weights (tests/test_quantize.py)
    model = str(kit(shape="tiny", family="starcoder"))
    chosen = load_backend(model, onnx=OnnxConfig(export_dir=str(tiny_onnx)))
    assert chosen.info.backend == "onnx" and str(tiny_onnx) in chosen.info.why
    fallback = load_backend(model, dtype="float32", onnx=OnnxConfig(export_dir=str(tmp_path / "none")))
    assert fallback.info.backend == "torch" and "no ONNX export for this checkpoint" in fallback.info.why
    assert "fim-lsp export-onnx" in fallback.info.why


def test_a_corrupt_export_falls_back_to_torch_cpu_with_the_reason(tiny_onnx, tmp_path):
    shutil.copytree(tiny_onnx, tmp_path, dirs_exist_ok=True)
    (tmp_path / FP32_FILE).write_bytes((tmp_path / FP32_FILE).read_bytes()[:500])
    backend = load_backend(str(tmp_path), backend="onnx", dtype="float32")
    assert backend.info.backend == "torch" and backend.info.device == "cpu"
    assert "corrupt or truncated" in backend.info.why
    result = backend.complete(CompletionRequest(DocId("x"), prompt(backend, "def f("), max_new_tokens=3))
    assert result.prompt_tokens > 0


def test_missing_onnxruntime_falls_back_to_torch_cpu(tiny_onnx, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    with pytest.raises(OnnxUnavailable, match="onnxruntime is not installed"):
        load_onnx_backend(str(tiny_onnx))
    backend = load_backend(str(tiny_onnx), backend="onnx")
    assert backend.info.backend == "torch" and "onnxruntime is not installed" in backend.info.why


def test_an_export_of_another_checkpoint_is_refused_then_rebuilt_when_onnx_is_asked_for(tiny_onnx, no_gpu, tmp_path,
                                                                                         monkeypatch):
    monkeypatch.setattr(hardware, "cpu_has_int8", lambda: False)  # else auto does not try ONNX Runtime
    other = kit(shape="tiny", family="starcoder", mha=True)
    stale = tmp_path / "export"
    shutil.copytree(tiny_onnx, stale)
    config = OnnxConfig(export_dir=str(stale), int8_on_export=False)
    refused = load_backend(str(other), onnx=config)
    assert refused.info.backend == "torch" and "made from another checkpoint" in refused.info.why
    rebuilt = load_backend(str(other), backend="onnx", onnx=config)
    assert rebuilt.info.backend == "onnx" and "on first use" in rebuilt.info.why
    assert Manifest.read(stale).source_hash == checkpoint_hash(other) != Manifest.read(tiny_onnx).source_hash
    assert (stale / MANIFEST).is_file() and rebuilt.model.args.kv_heads == 4


def test_a_dtype_the_graph_lacks_falls_back_with_the_reason(tiny_onnx):
    backend = load_backend(str(tiny_onnx), backend="onnx", dtype="bfloat16")
    assert backend.info.backend == "torch" and "float32 or int8, not bfloat16" in backend.info.why


def test_status_names_the_export_or_says_why_not_without_loading(tiny_onnx, no_gpu):
    from fim_lsp.status import describe

    info = describe(str(tiny_onnx))
    assert (info["backend"], info["dtype"], info["export"]) == ("onnx", "int8", str(tiny_onnx))
    assert info["model"] == str(kit(shape="tiny", family="starcoder"))
    plain = describe(str(kit(shape="tiny", family="starcoder")), dtype="float32")
    assert plain["backend"] == "torch" and plain["why"].startswith("ONNX Runtime not used: no ONNX export")
