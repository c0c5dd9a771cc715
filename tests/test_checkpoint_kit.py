"""The kit's checkpoints load through transformers' Auto classes with the real layouts."""
import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from fim_lsp.training.checkpoint_kit import SHAPES, STARCODER_SPECIALS, SANTACODER_SPECIALS, random_weights
from engine.fim import fim_tokens_from_vocab
from tests.conftest import kit


@pytest.mark.parametrize("family", ["starcoder", "santacoder"])
@pytest.mark.parametrize("mha", [False, True])
def test_gpt_bigcode_layout_loads_with_auto_classes(family, mha):
    path = kit(shape="tiny", family=family, mha=mha)
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert type(model).__name__ == "GPTBigCodeForCausalLM"
    assert model.config.multi_query is (not mha)
    specials = STARCODER_SPECIALS if family == "starcoder" else SANTACODER_SPECIALS
    for token in specials:
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, f"{token} must encode to one special token, got {ids}"
    assert fim_tokens_from_vocab(tokenizer.get_vocab()).family == family
    logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, SHAPES["tiny"].vocab_size)


def test_starcoder_specials_take_the_first_ids_and_santacoder_the_last():
    star = AutoTokenizer.from_pretrained(kit(shape="tiny", family="starcoder"))
    santa = AutoTokenizer.from_pretrained(kit(shape="tiny", family="santacoder"))
    assert star.convert_tokens_to_ids(["<|endoftext|>", "<fim_prefix>", "<filename>"]) == [0, 1, 5]
    assert santa.convert_tokens_to_ids("<|endoftext|>") == len(santa) - len(SANTACODER_SPECIALS)


def test_remote_code_layout_has_santacoders_original_names():
    path = kit(shape="tiny", family="santacoder", layout="santacoder-remote-code")
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["attention_head_type"] == "multiquery"
    assert config["architectures"] == ["GPT2LMHeadCustomModel"]
    assert AutoConfig.from_pretrained(path).n_layer == SHAPES["tiny"].n_layer
    E, hd = SHAPES["tiny"].n_embd, SHAPES["tiny"].n_embd // SHAPES["tiny"].n_head
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        assert f.get_slice("transformer.h.0.attn.q_attn.weight").get_shape() == [E, E]
        assert f.get_slice("transformer.h.0.attn.kv_attn.weight").get_shape() == [E, 2 * hd]  # Conv1D [in, out]
        assert f.get_slice("transformer.h.0.mlp.c_fc.weight").get_shape() == [E, 4 * E]
    assert "transformer.h.0.attn.c_attn.weight" not in names


def test_weights_are_deterministic_for_a_seed():
    shape = SHAPES["tiny"]
    a = random_weights(shape, False, "gpt_bigcode", 7, [0], "float32")
    b = random_weights(shape, False, "gpt_bigcode", 7, [0], "float32")
    c = random_weights(shape, False, "gpt_bigcode", 8, [0], "float32")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["transformer.wpe.weight"], c["transformer.wpe.weight"])
    assert torch.count_nonzero(a["transformer.wte.weight"][0]) == 0  # special rows zeroed


@pytest.mark.parametrize("shape", ["santacoder", "starcoderbase-1b"])
def test_real_shapes_have_real_sizes(shape):
    s = SHAPES[shape]
    assert (s.n_layer, s.n_embd, s.n_head) == (24, 2048, 16)
    assert (s.n_positions, s.vocab_size) == ({"santacoder": 2048, "starcoderbase-1b": 8192}[shape],
                                              {"santacoder": 49280, "starcoderbase-1b": 49152}[shape])
