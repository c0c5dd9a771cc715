"""SantaCoder-Megatron's two layouts: the kit writes them as the fork's script did, and they load
converted, matching transformers' gpt_bigcode on the same weights; unknown attention is refused."""
import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from transformers import GPTBigCodeForCausalLM

from fim_lsp.training.checkpoint_kit import SHAPES
from engine.loading import CheckpointError, load_model, read_config
from engine.megatron_layout import to_megatron_tensors
from engine.model import KVBuffer
from fim_lsp.status import describe
from tests.conftest import kit

CPU = torch.device("cpu")
IDS = torch.tensor([3, 50, 700, 12, 99, 5, 300, 1000])
TINY = SHAPES["tiny"]
MEGATRON = ["santacoder-megatron", "santacoder-megatron-custom"]


def logits_of(loaded) -> torch.Tensor:
    net = loaded.model
    with torch.no_grad():
        return net(IDS, torch.arange(len(IDS)), KVBuffer(net.args, len(IDS), torch.float32), 0)  # [T, V]


def reference_logits(seed: int) -> torch.Tensor:
    """transformers' gpt_bigcode on the kit's gpt_bigcode layout of the same seed (the same values)."""
    path = kit(shape="tiny", family="santacoder", layout="gpt_bigcode", seed=seed)
    model = GPTBigCodeForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(IDS[None]).logits[0]  # [T, V]


def copy_kit(tmp_path, layout, seed=0):
    out = tmp_path / layout
    shutil.copytree(kit(shape="tiny", family="santacoder", layout=layout, seed=seed), out)
    return out


def edit_config(path, change):
    data = json.loads((path / "config.json").read_text())
    change(data)
    (path / "config.json").write_text(json.dumps(data))


@pytest.mark.parametrize("layout", MEGATRON)
def test_kit_writes_the_forks_config_keys_and_tensor_names(layout):
    path = kit(shape="tiny", family="santacoder", layout=layout)
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "gpt_bigcode" and config["attention_type"] == 2
    assert "multi_query" not in config and config["architectures"] == ["GPTBigCodeLMHeadModel"]
    assert ("auto_map" in config) is (layout == "santacoder-megatron-custom")
    tensors = torch.load(path / "pytorch_model.bin", weights_only=True)
    E, hd = TINY.n_embd, TINY.n_embd // TINY.n_head
    assert torch.equal(tensors["lm_head.weight"], tensors["transformer.wte.weight"])
    c_fc, c_attn = tensors["transformer.h.0.mlp.c_fc.weight"], tensors["transformer.h.0.attn.c_attn.weight"]
    if layout == "santacoder-megatron":  # Conv1D [in, out], as the script wrote before 2023-02-20
        assert (tuple(c_fc.shape), tuple(c_attn.shape)) == ((E, 4 * E), (E, E + 2 * hd))
    else:  # nn.Linear [out, in], after
        assert (tuple(c_fc.shape), tuple(c_attn.shape)) == ((4 * E, E), (E + 2 * hd, E))
    assert read_config(path).layout == layout


@pytest.mark.parametrize("layout", MEGATRON)
def test_megatron_layouts_match_transformers_gpt_bigcode(layout, one_thread):
    loaded = load_model(str(kit(shape="tiny", family="santacoder", layout=layout, seed=3)), CPU, torch.float32)
    assert loaded.layout == layout
    assert (logits_of(loaded) - reference_logits(3)).abs().max().item() < 1e-4


def test_split_q_attn_kv_attn_attention_type_3_loads_the_same(tmp_path, one_thread):
    path = copy_kit(tmp_path, "santacoder-megatron", seed=3)
    base = torch.load(path / "pytorch_model.bin", weights_only=True)
    linear = {n: (t.t() if t.dim() == 2 and n.startswith("transformer.h.") else t) for n, t in base.items()}
    linear.pop("lm_head.weight")
    split = to_megatron_tensors(linear, conv1d=True, split_qkv=True, n_embd=TINY.n_embd)
    assert "transformer.h.0.attn.kv_attn.weight" in split and "transformer.h.0.attn.c_attn.weight" not in split
    torch.save(split, path / "pytorch_model.bin")
    edit_config(path, lambda c: c.update(attention_type=3))
    loaded = load_model(str(path), CPU, torch.float32)
    assert (logits_of(loaded) - reference_logits(3)).abs().max().item() < 1e-4


def test_the_custom_branchs_shipped_code_is_never_executed(tmp_path):
    path = copy_kit(tmp_path, "santacoder-megatron-custom")
    assert "raise RuntimeError" in (path / "modeling_gpt_bigcode.py").read_text()
    load_model(str(path), CPU, torch.float32)
    info = describe(str(path))
    assert info["layout"] == "santacoder-megatron-custom" and info["attention"] == "multi-query"
    assert not (path / "EXECUTED").exists()


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(attention_type=1), r"attention_type 1 \(multi-head\) is ambiguous"),
    (lambda c: c.update(attention_type=7), "attention_type 7 is unknown"),
    (lambda c: c.update(attention_type="multiquery"), "attention_type 'multiquery' is not one of"),
    (lambda c: c.update(attention_type=None), "attention_type None is not one of"),
    (lambda c: c.update(multi_query=False), r"attention_type 2 \(multi-query\) contradicts multi_query False"),
], ids=["multi-head", "unknown int", "string", "null", "contradiction"])
def test_an_ambiguous_or_unknown_attention_kind_is_a_one_line_refusal(tmp_path, change, message):
    path = copy_kit(tmp_path, "santacoder-megatron")
    edit_config(path, change)
    with pytest.raises(CheckpointError, match=message) as err:
        load_model(str(path), CPU, torch.float32)
    assert "\n" not in str(err.value) and "config.json" in str(err.value)


def test_status_names_the_megatron_layout_and_refuses_the_unknown(tmp_path, capsys):
    from fim_lsp.status import main_status

    path = copy_kit(tmp_path, "santacoder-megatron")
    args = SimpleNamespace(model=str(path), backend="auto", device="cpu", dtype="float32", revision=None,
                           json=False, threads=None)
    assert main_status(args) == 0
    assert "layout: santacoder-megatron\n" in capsys.readouterr().out
    edit_config(path, lambda c: c.update(attention_type=4))
    assert main_status(args) == 2
    err = capsys.readouterr().err
    assert "attention_type 4 is unknown" in err and err.count("\n") == 1


def test_an_orientation_the_shapes_cannot_tell_is_refused(tmp_path):
    path = copy_kit(tmp_path, "santacoder-megatron")
    tensors = torch.load(path / "pytorch_model.bin", weights_only=True)
    tensors["transformer.h.0.mlp.c_fc.weight"] = tensors["transformer.h.0.mlp.c_fc.weight"][:, :100]
    torch.save(tensors, path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"c_fc\.weight has shape \(64, 100\)"):
        load_model(str(path), CPU, torch.float32)
