"""Checkpoint loading: layouts and file formats load exactly; every bad checkpoint is one clear error."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import GPTBigCodeForCausalLM

from engine.loading import CheckpointError, check_fits, load_model, read_config, read_safetensors
from engine.model import KVBuffer, ModelArgs
from tests.conftest import kit

CPU = torch.device("cpu")
IDS = torch.tensor([3, 50, 700, 12, 99, 5, 300])


def logits_of(loaded) -> torch.Tensor:
    net = loaded.model
    with torch.no_grad():
        return net(IDS, torch.arange(len(IDS)), KVBuffer(net.args, len(IDS), torch.float32), 0)


def copy_kit(tmp_path, **spec):
    out = tmp_path / "ckpt"
    shutil.copytree(kit(**spec), out)
    return out


def edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_pytorch_model_bin_loads_like_safetensors(tmp_path):
    path = copy_kit(tmp_path, shape="tiny")
    expected = logits_of(load_model(str(path), CPU, torch.float32))
    torch.save(load_file(str(path / "model.safetensors")), path / "pytorch_model.bin")
    (path / "model.safetensors").unlink()
    assert torch.equal(logits_of(load_model(str(path), CPU, torch.float32)), expected)


def test_fp16_checkpoint_is_upcast_on_cpu_and_matches_transformers():
    path = kit(shape="tiny", dtype="float16")
    loaded = load_model(str(path), CPU, torch.float32)
    assert loaded.stored_dtype == torch.float16 and loaded.model.wte.weight.dtype == torch.float32
    reference = GPTBigCodeForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = reference(IDS[None]).logits[0]
    assert (logits_of(loaded) - expected).abs().max().item() < 1e-4


@pytest.mark.parametrize("stored", ["float32", "float16"])
def test_our_safetensors_reader_gives_what_safetensors_gives(stored):
    path = kit(shape="tiny", dtype=stored) / "model.safetensors"
    expected = load_file(str(path))
    read = {name: t for name, _count, t in read_safetensors(path, getattr(torch, stored))}
    assert read.keys() == expected.keys()
    for name, t in expected.items():
        assert read[name].dtype == t.dtype and torch.equal(read[name], t), name
    cast = {name: t for name, _count, t in read_safetensors(path, torch.bfloat16)}
    assert all(cast[name].dtype == torch.bfloat16 and torch.equal(cast[name], t.to(torch.bfloat16))
               for name, t in expected.items())


def test_truncated_or_foreign_weight_files_are_refused_with_the_file_named(tmp_path):
    path = copy_kit(tmp_path, shape="tiny")
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:len(data) - 1000])
    with pytest.raises(CheckpointError, match=r"cannot read .*model\.safetensors: .*truncated"):
        load_model(str(path), CPU, torch.float32)
    weights.write_bytes(b"PK\x03\x04 a zip archive, not weights")
    with pytest.raises(CheckpointError, match=r"cannot read .*model\.safetensors: .*not a safetensors file"):
        load_model(str(path), CPU, torch.float32)


def test_bf16_placement_keeps_bf16_weights():
    loaded = load_model(str(kit(shape="tiny")), CPU, torch.bfloat16)
    assert loaded.dtype == torch.bfloat16 and loaded.model.h[0].attn.c_attn.weight.dtype == torch.bfloat16


def test_missing_directory_and_missing_config(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint directory"):
        load_model(str(tmp_path / "nowhere"), CPU, torch.float32)
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(str(tmp_path), CPU, torch.float32)


def test_revision_with_a_directory_is_a_mistake(tmp_path):
    with pytest.raises(CheckpointError, match="applies to hub ids"):
        load_model(str(kit(shape="tiny")), CPU, torch.float32, revision="main")


def test_an_uncached_hub_id_offline_names_the_directory_to_pass_instead(tmp_path):
    """Run where the hub is off by its own flags and the network guard refuses anything beyond
    loopback: the error names the directory to pass, and no connection was even tried."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    log = tmp_path / "guard.log"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
               PYTHONPATH=os.pathsep.join([str(REPO / "tests" / "netguard"), str(REPO)]),
               FIM_LSP_NETGUARD_LOG=str(log))
    script = ("import torch\nfrom engine.loading import CheckpointError, load_model\n"
              "try:\n    load_model('bigcode/no-such-model-here', torch.device('cpu'), torch.float32, revision='v1')\n"
              "except CheckpointError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    message = done.stdout.strip()
    assert message.startswith("bigcode/no-such-model-here@v1 is not in the local hub cache and the hub is not "
                              "reachable (") and message.endswith("and pass --model DIR"), message
    assert "\n" not in message
    events = [line.split(" ", 1)[1] for line in log.read_text().splitlines()]
    assert events == ["guard"], f"the offline load tried the network: {events}"


def test_another_model_type_is_refused(tmp_path):
    path = copy_kit(tmp_path, shape="tiny")
    edit_json(path / "config.json", lambda c: c.update(model_type="llama"))
    with pytest.raises(CheckpointError, match="'llama' is not a GPTBigCode model"):
        load_model(str(path), CPU, torch.float32)


def test_plain_gpt2_without_santacoders_head_type_is_refused(tmp_path):
    path = copy_kit(tmp_path, shape="tiny", family="santacoder", layout="santacoder-remote-code")
    assert read_config(path).layout == "santacoder-remote-code"
    edit_json(path / "config.json", lambda c: c.pop("attention_head_type"))
    with pytest.raises(CheckpointError, match="'gpt2' is not a GPTBigCode model"):
        read_config(path)


@pytest.mark.parametrize("old, new, match", [
    ("<|endoftext|>", "<|end|>", "no '<|endoftext|>' token"),
    ("<fim_middle>", "<fim_mid>", "lacks"),
], ids=["no end of text", "partial FIM set"])
def test_broken_tokenizers_are_refused(tmp_path, old, new, match):
    path = copy_kit(tmp_path, shape="tiny")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        file = path / name
        file.write_text(file.read_text().replace(json.dumps(old)[1:-1], json.dumps(new)[1:-1]))
    with pytest.raises(CheckpointError, match=match):
        load_model(str(path), CPU, torch.float32)


def test_weights_that_disagree_with_the_config_are_refused(tmp_path):
    path = copy_kit(tmp_path, shape="tiny")
    edit_json(path / "config.json", lambda c: c.update(n_layer=3))
    with pytest.raises(CheckpointError, match="missing"):
        load_model(str(path), CPU, torch.float32)
    edit_json(path / "config.json", lambda c: c.update(n_layer=2, n_inner=128))
    with pytest.raises(CheckpointError, match=r"mlp\.c_fc\.\w+ has shape"):
        load_model(str(path), CPU, torch.float32)


def test_starcoder_15b_is_refused_from_its_config_before_any_weight_is_read(tmp_path):
    path = copy_kit(tmp_path, shape="tiny")
    edit_json(path / "config.json", lambda c: c.update(n_layer=40, n_embd=6144, n_head=48, vocab_size=49152,
                                                       n_positions=8192, n_inner=24576))
    (path / "model.safetensors").unlink()  # were weights read, the error would be about them
    with pytest.raises(CheckpointError, match=r"15\.5B-parameter model needs about .* GiB in float32 but this machine"):
        load_model(str(path), CPU, torch.float32, available=lambda _device: 24 * 2**30)


def test_check_fits_counts_bytes_of_the_target_dtype():
    args = ModelArgs(n_layer=24, n_embd=2048, n_head=16, n_positions=2048, vocab_size=49280)
    assert 1.1e9 < args.param_count() < 1.2e9  # SantaCoder's 1.1B
    check_fits(args, torch.bfloat16, available=3 * 2**30, where="here")
    with pytest.raises(CheckpointError, match="in float32"):
        check_fits(args, torch.float32, available=3 * 2**30, where="here")
