"""Backend, device and dtype selection; `fim-lsp status`; the bench command's dispatch."""
import argparse
import json

import pytest
import torch

from benchmarks.cli import main_bench
from engine import backends, hardware, select
from engine.api import BackendError
from engine.api import CompletionRequest, DocId
from engine.loading import CheckpointError
from engine.select import choose_placement, load_backend
from fim_lsp.status import describe, main_status
from tests.conftest import kit


@pytest.mark.parametrize("dtype, expected", [("float32", torch.float32), ("bfloat16", torch.bfloat16)])
def test_explicit_cpu_dtypes_are_used_as_asked(dtype, expected):
    placement = choose_placement("cpu", dtype)
    assert placement.device == torch.device("cpu") and placement.dtype == expected
    assert placement.kv_dtype == expected and placement.why == f"--dtype {dtype} as asked"


def test_auto_on_cpu_follows_native_bf16_support(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(hardware, "cpu_has_int8", lambda: False)  # else int8 weights (tests/test_quantize.py)
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: True)
    assert choose_placement().dtype == torch.bfloat16 and "bf16" in choose_placement().why
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: False)
    assert choose_placement().dtype == torch.float32 and "fp32" in choose_placement().why


@pytest.mark.parametrize("device, dtype, match", [
    ("cpu", "float16", "slow and inexact on CPU"),
    ("mps", "auto", "only cpu and cuda"),
    ("nonsense!", "auto", "is not a device"),
    ("cpu", "int3", "choose one of"),
])
def test_bad_placements_are_clear_errors(device, dtype, match):
    with pytest.raises(CheckpointError, match=match):
        choose_placement(device, dtype)


def test_cuda_without_a_gpu_says_so(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CheckpointError, match="sees no GPU"):
        choose_placement("cuda", "auto")


def test_load_backend_gives_a_working_torch_backend():
    before = torch.get_num_threads()
    try:
        backend = load_backend(str(kit(shape="tiny")), dtype="float32", threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert backend.info.backend == "torch" and backend.info.why.endswith("--dtype float32 as asked")
    f = backend.fim
    result = backend.complete(CompletionRequest(DocId("x"), f"{f.prefix}{f.suffix}{f.middle}def f(", 4))
    assert result.prompt_tokens > 0 and result.generated_tokens == len(result.token_ids)


def test_no_model_and_no_bundled_default_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(select, "DEFAULT_MODEL_DIR", tmp_path / "default_model")
    with pytest.raises(CheckpointError, match="no bundled default model"):
        load_backend(None)


def test_a_runtime_missing_from_this_build_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(backends.RUNTIMES, "openai", "engine.backends.no_such_runtime")
    with pytest.raises(BackendError, match="not available in this build"):
        backends.load("openai", model=str(kit(shape="tiny")))
    with pytest.raises(BackendError, match="choose auto, torch"):
        backends.load("tensorrt", model=str(kit(shape="tiny")))
    with pytest.raises(CheckpointError, match="not a local runtime"):
        load_backend(str(kit(shape="tiny")), backend="tensorrt")


def status_args(**kw):
    base = dict(model=str(kit(shape="tiny")), backend="auto", device="cpu", dtype="float32", revision=None,
                threads=None, json=True)
    return argparse.Namespace(**{**base, **kw})


def test_status_describes_without_loading_weights(capsys):
    info = describe(str(kit(shape="tiny")), device="cpu", dtype="float32")
    assert (info["backend"], info["device"], info["dtype"], info["attention"]) == (
        "torch", "cpu", "float32", "multi-query")
    assert info["n_ctx"] == 512 and info["fim_family"] == "starcoder" and info["kv_bytes_per_token"] == 2 * 2 * 16 * 4
    assert main_status(status_args()) == 0
    assert json.loads(capsys.readouterr().out)["why"].endswith("--dtype float32 as asked")
    assert main_status(status_args(json=False)) == 0
    assert "dtype: float32" in capsys.readouterr().out.splitlines()


def test_status_of_a_bad_model_prints_one_line(capsys, tmp_path):
    assert main_status(status_args(model=str(tmp_path / "missing"))) == 2
    err = capsys.readouterr().err
    assert err.startswith("fim-lsp status: no checkpoint directory") and err.count("\n") == 1


def test_bench_of_a_benchmark_not_in_this_build_says_so(capsys, monkeypatch):
    monkeypatch.setitem(__import__("benchmarks.cli").cli.BENCHES, "peer", ("benchmarks.no_such_bench", "main"))
    assert main_bench(argparse.Namespace(which="peer")) == 3
    assert "not available" in capsys.readouterr().err
