"""The memory plan of StarCoder 15.5B and StarCoderBase-7B from their configs (written by the kit,
no weights), against figures worked out by hand; a model that does not fit is refused with it."""
from types import SimpleNamespace

import pytest

from fim_lsp.training.checkpoint_kit import CheckpointSpec, write_config_only
from engine.loading import read_config
from engine.memory_plan import GIB, Place, memory_plan, render_plan
from engine.quantize import int8_weight_bytes
from fim_lsp.status import DoesNotFit, describe, main_status
from tests.conftest import kit


def by_hand(L, E, I, V, P, D=128):  # noqa: E741 (I: the MLP width, as in the papers)
    """(params, int8 bytes, K/V fp32 bytes a token) of a multi-query GPTBigCode, counted by hand.

    A block: two LayerNorms (4E), c_attn [E + 2D, E] + bias, c_proj [E, E] + bias, c_fc [I, E] +
    bias, c_proj [E, I] + bias. Int8: each matrix element 1 byte, each output row an fp32 scale, an
    fp32 zero-point term (per-token activations, engine.quantize) and a bf16 bias (the LM head: no
    bias), the LM head's own int8 copy of wte, wte/wpe/LayerNorms bf16.
    """
    block = 4 * E + E * (E + 2 * D) + (E + 2 * D) + E * E + E + E * I + I + I * E + E
    params = V * E + P * E + L * block + 2 * E
    matrices = L * ((E + 2 * D) * E + E * E + I * E + E * I)
    rows = L * ((E + 2 * D) + E + I + E)
    int8 = matrices + rows * (4 + 4 + 2) + V * E + V * (4 + 4) + 2 * V * E + 2 * P * E + (L * 4 * E + 2 * E) * 2
    return params, int8, L * 2 * D * 4


STARCODER_15B = dict(L=40, E=6144, I=24576, V=49152, P=8192)
STARCODERBASE_7B = dict(L=42, E=4096, I=16384, V=49152, P=8192)


@pytest.mark.parametrize("shape, dims, params, int8, kv_fp32", [
    ("starcoder-15b", STARCODER_15B, 15_517_456_384, 16_188_731_392, 40_960),
    ("starcoderbase-7b", STARCODERBASE_7B, 7_327_263_232, 7_775_495_168, 43_008),
])
def test_plan_of_the_real_configs_matches_the_hand_count(tmp_path, shape, dims, params, int8, kv_fp32):
    assert by_hand(**dims) == (params, int8, kv_fp32)
    path = write_config_only(CheckpointSpec(shape=shape, family="starcoder"), tmp_path / shape)
    assert not (path / "model.safetensors").exists()
    args = read_config(path).args
    places = (Place("cuda:0 (24 GiB card)", "cuda", 24 * GIB), Place("RAM", "cpu", 24 * GIB))
    plan = memory_plan(args, places, int8_weight_bytes(args))  # int8 sized on the meta device
    assert plan.params == params and plan.n_ctx == 8192
    assert plan.weights == {"float32": 4 * params, "bfloat16": 2 * params, "float16": 2 * params, "int8": int8}
    assert plan.kv_per_token == {"float32": kv_fp32, "bfloat16": kv_fp32 // 2, "float16": kv_fp32 // 2}
    assert plan.kv_window("bfloat16") == kv_fp32 // 2 * 8192
    # what fits in 24 GiB: 1.1 x weights + one window of K/V
    fits_bf16 = int(2 * params * 1.1) + kv_fp32 // 2 * 8192 <= 24 * GIB
    assert plan.fits["RAM"] == (("int8", "bfloat16") if fits_bf16 else ("int8",))
    assert plan.fits["cuda:0 (24 GiB card)"] == (("bfloat16", "float16") if fits_bf16 else ())
    assert fits_bf16 is (shape == "starcoderbase-7b")  # 7B: 16.1 GB in bf16; 15.5B: 34.3 GB


def test_rendered_plan_of_starcoderbase_7b(tmp_path):
    path = write_config_only(CheckpointSpec(shape="starcoderbase-7b", family="starcoder"), tmp_path / "7b")
    args = read_config(path).args
    lines = render_plan(memory_plan(args, (Place("RAM", "cpu", 16 * GIB),), int8_weight_bytes(args)))
    assert lines == [
        "memory plan (7.33B parameters, window 8,192 tokens):",
        "  weights float32: 27.30 GiB",
        "  weights bfloat16: 13.65 GiB",
        "  weights float16: 13.65 GiB",
        "  weights int8: 7.24 GiB",
        "  K/V float32: 43,008 B/token, 336.0 MiB for the window",  # 43,008 x 8,192 = 352,321,536 B
        "  K/V bfloat16: 21,504 B/token, 168.0 MiB for the window",
        "  RAM: 16.0 GiB free; fits int8, bfloat16",  # bf16: 1.1 x 13.65 + 0.16 = 15.18 GiB
    ]


def test_a_model_that_does_not_fit_is_refused_with_the_plan_and_alternatives(tmp_path):
    path = write_config_only(CheckpointSpec(shape="starcoder-15b", family="starcoder"), tmp_path / "15b")
    ram = (Place("RAM", "cpu", 24 * GIB),)
    with pytest.raises(DoesNotFit) as err:  # refused from the config: there is no tokenizer or weight to read
        describe(str(path), device="cpu", dtype="bfloat16", places=ram)
    message = str(err.value)
    # 1.1 x 31,034,912,768 B + 8,192 x 20,480 B = 34,306,176,204 B = 31.95 GiB
    assert message.startswith("the model does not fit: bfloat16 on RAM needs 32.0 GiB")
    assert "memory plan (15.52B parameters" in message and "  weights int8: 15.08 GiB" in message
    assert "int8 weights on the CPU: --device cpu --dtype int8" in message
    assert "--backend openai --url URL" in message
    with pytest.raises(DoesNotFit, match="fits nothing"):
        describe(str(path), device="cpu", dtype="int8", places=(Place("RAM", "cpu", 8 * GIB),))


def test_status_prints_the_plan_and_auto_choice_or_refuses(tmp_path, monkeypatch, capsys):
    import shutil

    import fim_lsp.status as status

    path = write_config_only(CheckpointSpec(shape="starcoderbase-7b", family="starcoder"), tmp_path / "7b")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):  # any StarCoder tokenizer
        shutil.copy(kit(shape="tiny", family="starcoder") / name, path / name)
    monkeypatch.setattr(status, "visible_places", lambda: (Place("RAM", "cpu", 64 * GIB),))
    args = SimpleNamespace(model=str(path), backend="auto", device="cpu", dtype="auto", revision=None, json=False,
                           threads=None)
    assert main_status(args) == 0
    out = capsys.readouterr().out
    assert "layout: gpt_bigcode\n" in out and "memory plan (7.33B parameters" in out
    assert "  RAM: 64.0 GiB free; fits int8, bfloat16, float32\n" in out
    monkeypatch.setattr(status, "visible_places", lambda: (Place("RAM", "cpu", 4 * GIB),))
    assert main_status(args) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "the model does not fit" in captured.err and "--backend openai" in captured.err
