"""4-bit weights (engine.int4, `--dtype int4`): packing, the kernel's row independence, exact cached
runs, the error where the kernels are missing, and what `status` says."""
import pytest
import torch

from engine import int4
from engine.api import CompletionRequest, DocId
from engine.int4 import (GROUP_SIZE, Int4Linear, Int4Unavailable, dequantize_groups, int4_weight_bytes,
                         quantize_groups, quantize_int4)
from engine.loading import CheckpointError, load_model
from engine.model import ModelArgs
from engine.quantize import weight_bytes
from engine.select import INT4_NOT_PICKED, choose_placement, load_backend
from fim_lsp.status import describe
from fim_lsp.training.checkpoint_kit import SHAPES
from tests.conftest import kit
from tests.test_int8_exact import assert_replay_equals_recompute, int8_backend
from tests.test_speculative import typing_requests

CPU = torch.device("cpu")


@pytest.fixture(scope="module", params=["starcoder", "santacoder"])
def int4_model(request):
    """A tiny kit model (multi-head or multi-query) with int4 weights and bf16 activations and K/V."""
    loaded = load_model(str(kit(shape="tiny", family=request.param)), CPU, torch.bfloat16)
    quantize_int4(loaded.model)
    return loaded


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_groups_round_trip_within_half_a_step(group_size):
    torch.manual_seed(0)
    w = torch.randn(96, 256) * 0.05
    q, scales_and_zeros = quantize_groups(w, group_size)
    assert q.dtype == torch.int32 and int(q.min()) >= 0 and int(q.max()) <= 15
    assert scales_and_zeros.shape == (256 // group_size, 96, 2)
    step = scales_and_zeros[..., 0].float().t().repeat_interleave(group_size, dim=1)  # [N, K]: each value's scale
    error = (dequantize_groups(q, scales_and_zeros) - w).abs()
    # half a step of rounding, plus the bf16 rounding of the group's offset (|zero| <= max |w| of the group)
    assert bool((error <= 0.5 * step + w.abs().max() * 2**-8).all())
    assert float(error.max()) > 0.1 * float(step.min())  # 4 bits lose something: the check can fail


def test_the_packed_kernel_multiplies_by_the_dequantised_weight():
    """Fed the identity, the kernel returns the weight it packed, as dequantised (to bf16 rounding)."""
    torch.manual_seed(1)
    w = torch.randn(48, 128) * 0.05
    layer = Int4Linear(w, None, group_size=64)
    assert layer.packed.dtype == torch.uint8 and layer.packed.numel() == 48 * 128 // 2  # two values a byte
    expected = dequantize_groups(*quantize_groups(w, 64))  # [N, K]
    got = layer(torch.eye(128)).float().t()  # [K, N] -> [N, K]
    torch.testing.assert_close(got, expected, rtol=2**-7, atol=1e-6)
    rel = float((expected - w).norm() / w.norm())
    assert 0.01 < rel < 0.12, f"4-bit group quantisation error {rel:.3f} out of the expected range"


def test_a_rows_result_does_not_depend_on_its_batch():
    """Weight-only int4: row t of a 300-row call is, to the bit, what row t alone gives."""
    torch.manual_seed(2)
    layer = Int4Linear(torch.randn(320, 256) * 0.05, torch.randn(320) * 0.01)
    x = torch.randn(300, 256).to(torch.bfloat16)
    batch = layer(x)
    for rows in (1, 2, 3, 8, 17, 64):
        assert torch.equal(layer(x[:rows]), batch[:rows])
    for t in (0, 5, 150, 299):
        assert torch.equal(layer(x[t:t + 1])[0], batch[t])


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("beam", [1, 3], ids=["greedy", "beam-3"])
def test_a_typing_replay_with_a_cache_equals_recompute_under_int4(int4_model, beam):
    assert_replay_equals_recompute(int8_backend(int4_model), lambda: int8_backend(int4_model, reuse=False), beam)


@pytest.mark.usefixtures("one_thread")
def test_speculative_verification_under_int4_agrees_with_one_token_decoding_at_its_measured_floor(int4_model):
    """Not exact, like bf16 (its activations are bf16): on the multi-head kit model 1 of 33 typing
    requests differed (at token 47 of 64) on 2026-12-07; the multi-query one agreed on all. The
    floor: at most 2 differing requests."""
    plain, spec = int8_backend(int4_model), int8_backend(int4_model, speculate=4)
    differing = total = drafted = 0
    for request in typing_requests(plain):
        a, b = plain.complete(request), spec.complete(request)
        total += 1
        differing += (b.token_ids, b.text) != (a.token_ids, a.text)
        drafted += b.extra["drafted_tokens"]
    assert total >= 30 and drafted > 0
    assert differing <= 2, f"{differing} of {total} requests differ under int4 speculation (measured: 1 of 33)"


def test_missing_kernels_are_a_clear_error(monkeypatch):
    monkeypatch.setattr(int4, "PACK_OP", "_no_such_int4_pack_op")
    with pytest.raises(CheckpointError, match="--dtype int4 needs torch's CPU int4 kernels: this torch .* has no "
                                              "torch.ops.aten._no_such_int4_pack_op.*use --dtype int8"):
        choose_placement("cpu", "int4")
    loaded = load_model(str(kit(shape="tiny", family="starcoder")), CPU, torch.bfloat16)
    with pytest.raises(Int4Unavailable, match="use --dtype int8"):
        quantize_int4(loaded.model)
    assert loaded.model.lm_head is None, "nothing was swapped before the refusal"


def test_int4_on_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(CheckpointError, match="--dtype int4 is the CPU's"):
        choose_placement("cuda", "int4")


def test_loading_int4_runs_the_int4_path_and_status_says_so_and_why_auto_does_not(monkeypatch):
    """`load_backend(dtype="int4")` (what `fim-lsp serve --dtype int4` and the peer bench's torch int4
    row run) and `status`, which also says why auto leaves int4 alone."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    tiny = str(kit(shape="tiny", family="starcoder"))
    backend = load_backend(tiny, backend="torch", device="cpu", dtype="int4")
    assert (backend.info.backend, backend.info.dtype) == ("torch", "int4")
    assert backend.info.why.startswith("--dtype int4 as asked; kernel: torch's CPU int4 matmul")
    assert isinstance(backend.model.lm_head, Int4Linear) and backend.kv_dtype == torch.bfloat16
    result = backend.complete(CompletionRequest(DocId("x"), "def add(a, b):\n", max_new_tokens=4))
    assert result.generated_tokens == len(result.token_ids) > 0
    info = describe(tiny, dtype="int4")
    assert (info["backend"], info["dtype"], info["kv_dtype"]) == ("torch", "int4", "bfloat16")
    args = backend.model.args
    assert info["weight_bytes"] == int4_weight_bytes(args) == weight_bytes(backend.model)
    assert info["memory_plan"]["weights"]["int4"] == info["weight_bytes"] < info["memory_plan"]["weights"]["int8"]
    assert "int4" in info["memory_plan"]["fits"]["RAM"]
    auto = describe(tiny, backend="torch")
    assert auto["dtype"] != "int4" and INT4_NOT_PICKED in auto["why"]
    assert INT4_NOT_PICKED in choose_placement("cpu", "auto", params=10**10).why  # int8 or float: either way


def test_weight_bytes_of_a_large_shape_are_about_half_a_byte_a_weight():
    s = SHAPES["santacoder"]
    args = ModelArgs(n_layer=s.n_layer, n_embd=s.n_embd, n_head=s.n_head, n_positions=s.n_positions,
                     vocab_size=s.vocab_size, multi_query=True)
    matrices = args.param_count() - args.vocab_size * args.n_embd - args.n_positions * args.n_embd
    head = args.vocab_size * args.n_embd
    tables = 2 * (args.vocab_size + args.n_positions) * args.n_embd  # bf16 embedding tables
    per_weight = (int4_weight_bytes(args) - tables) / (matrices + head)
    assert 0.5 < per_weight < 0.5 + 4 / GROUP_SIZE + 0.01  # 4 bits + a bf16 scale and offset per group
