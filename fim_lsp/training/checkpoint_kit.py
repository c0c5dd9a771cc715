"""Random-weight GPTBigCode checkpoints laid out on disk exactly like the real ones.

Tests and benchmarks cannot download SantaCoder or StarCoder, so the project makes its own:
`config.json` with the real keys, `model.safetensors` (or SantaCoder's original remote-code
layout) with the real tensor names, and a byte-level BPE tokenizer trained locally on the Python
standard library with the family's real special tokens. Everything is deterministic for a seed
and cached, so a test run never retrains a tokenizer.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import sysconfig
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from engine.fim import EOD_TOKEN, JUPYTER_TOKENS, REPONAME_TOKEN, SPELLINGS

Layout = Literal["gpt_bigcode", "santacoder-remote-code", "santacoder-megatron", "santacoder-megatron-custom"]
SANTACODER_ONLY = ("santacoder-remote-code", "santacoder-megatron", "santacoder-megatron-custom")
FamilyName = Literal["santacoder", "starcoder"]

KIT_VERSION = 1  # bump when the files written change, to invalidate caches


@dataclass(frozen=True, slots=True)
class Shape:
    """The size of a GPTBigCode model."""

    n_layer: int
    n_embd: int
    n_head: int
    n_positions: int
    vocab_size: int  # the config's (padded) vocabulary size
    tokenizer_vocab: int  # tokens the BPE is trained to, special tokens included
    init_std: float  # weight init; larger than 0.02 in small shapes so greedy text varies


SHAPES: dict[str, Shape] = {
    "tiny": Shape(2, 64, 4, 512, 1024, 1024, 0.2),
    "small": Shape(4, 256, 8, 4096, 8192, 8192, 0.1),
    "santacoder": Shape(24, 2048, 16, 2048, 49280, 49152, 0.02),
    "starcoderbase-1b": Shape(24, 2048, 16, 8192, 49152, 49152, 0.02),
    # too large to write weights for here: configs only (write_config_only), for memory plans
    "starcoderbase-7b": Shape(42, 4096, 32, 8192, 49152, 49152, 0.02),
    "starcoder-15b": Shape(40, 6144, 48, 8192, 49152, 49152, 0.02),
}
CONFIG_ONLY_SHAPES = ("starcoderbase-7b", "starcoder-15b")

# the published tokenizers' special tokens, in their id order (FIM spellings from engine.fim)
SANTACODER_SPECIALS = [EOD_TOKEN, *SPELLINGS["santacoder"]]
STARCODER_SPECIALS = [
    EOD_TOKEN, *SPELLINGS["starcoder"], "<filename>",
    "<gh_stars>", "<issue_start>", "<issue_comment>", "<issue_closed>", *JUPYTER_TOKENS,
    "<empty_output>", "<commit_before>", "<commit_msg>", "<commit_after>", REPONAME_TOKEN,
]


@dataclass(frozen=True, slots=True)
class CheckpointSpec:
    """Everything that determines a kit checkpoint's bytes."""

    shape: str = "tiny"
    family: FamilyName = "starcoder"
    mha: bool = False
    layout: Layout = "gpt_bigcode"
    seed: int = 0
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"

    def key(self) -> str:
        """A short, stable name for the cache directory."""
        digest = hashlib.sha256(json.dumps([KIT_VERSION, asdict(self)]).encode()).hexdigest()[:10]
        attn = "mha" if self.mha else "mqa"
        return f"{self.shape}-{self.family}-{attn}-{self.layout}-s{self.seed}-{self.dtype}-{digest}"


def default_cache_dir() -> Path:
    """Where kit tokenizers and checkpoints are cached (read when called, not at import)."""
    import os

    base = os.environ.get("FIM_LSP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fim-lsp"
    )
    return Path(base)


def specials_for(family: FamilyName) -> list[str]:
    """The family's special tokens, in the order the real tokenizer lists them."""
    return SANTACODER_SPECIALS if family == "santacoder" else STARCODER_SPECIALS


# ---------------------------------------------------------------------------------------------
# Tokenizer


def corpus_files(max_bytes: int = 8_000_000) -> list[Path]:
    """Python standard-library sources (present on every machine), sorted, up to `max_bytes`."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.rglob("*.py") if "site-packages" not in p.parts and "test" not in p.parts)
    chosen, total = [], 0
    for path in files:
        size = path.stat().st_size
        if total + size > max_bytes:
            continue
        chosen.append(path)
        total += size
    return chosen


def train_tokenizer(family: FamilyName, vocab_size: int, files: list[Path]):
    """A byte-level BPE over `files` with the family's special tokens; returns `tokenizers.Tokenizer`.

    StarCoder's special tokens take ids 0..n as in the real tokenizer; SantaCoder's come after
    the learned vocabulary (its `<|endoftext|>` is 49152 in the real model).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = specials_for(family)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    leading = specials if family == "starcoder" else []
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - (0 if leading else len(specials)),
        special_tokens=leading,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )

    def lines():
        for path in files:
            yield path.read_text(encoding="utf-8", errors="replace")

    tokenizer.train_from_iterator(lines(), trainer=trainer)
    if not leading:
        tokenizer.add_special_tokens(specials)
    return tokenizer


def save_tokenizer(tokenizer, family: FamilyName, out: Path, model_max_length: int) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json as the hub has them."""
    from transformers import PreTrainedTokenizerFast

    specials = specials_for(family)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=specials[1:],
        model_max_length=model_max_length,
    )
    fast.save_pretrained(str(out))
    special_map = {
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "additional_special_tokens": specials[1:],
    }
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")


def cached_tokenizer(family: FamilyName, vocab_size: int, cache_dir: Path):
    """Train (once per machine) or load the kit tokenizer for a family and size."""
    from tokenizers import Tokenizer

    path = cache_dir / "tokenizers" / f"{family}-{vocab_size}-v{KIT_VERSION}.json"
    if path.exists():
        return Tokenizer.from_file(str(path))
    tokenizer = train_tokenizer(family, vocab_size, corpus_files())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tokenizer.save(str(tmp))
    tmp.replace(path)
    return tokenizer


# ---------------------------------------------------------------------------------------------
# Weights


def gpt_bigcode_config(shape: Shape, family: FamilyName, mha: bool, eos_id: int) -> dict:
    """config.json of a `gpt_bigcode` checkpoint, with the keys the hub's files carry."""
    return {
        "activation_function": "gelu_pytorch_tanh",
        "architectures": ["GPTBigCodeForCausalLM"],
        "attention_softmax_in_fp32": True,
        "attn_pdrop": 0.1,
        "bos_token_id": eos_id,
        "embd_pdrop": 0.1,
        "eos_token_id": eos_id,
        "initializer_range": shape.init_std,
        "layer_norm_epsilon": 1e-05,
        "model_type": "gpt_bigcode",
        "multi_query": not mha,
        "n_embd": shape.n_embd,
        "n_head": shape.n_head,
        "n_inner": 4 * shape.n_embd,
        "n_layer": shape.n_layer,
        "n_positions": shape.n_positions,
        "resid_pdrop": 0.1,
        "scale_attention_softmax_in_fp32": True,
        "scale_attn_weights": True,
        "summary_activation": None,
        "summary_first_dropout": 0.1,
        "summary_proj_to_labels": True,
        "summary_type": "cls_index",
        "summary_use_proj": True,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": shape.vocab_size,
    }


def remote_code_config(shape: Shape, mha: bool, eos_id: int) -> dict:
    """config.json of SantaCoder's original layout (`GPT2CustomConfig`, executed remote code)."""
    return {
        "_name_or_path": "bigcode/santacoder",
        "activation_function": "gelu_fast",
        "architectures": ["GPT2LMHeadCustomModel"],
        "attention_head_type": "multihead" if mha else "multiquery",
        "attn_pdrop": 0.1,
        "auto_map": {
            "AutoConfig": "configuration_gpt2_mq.GPT2CustomConfig",
            "AutoModelForCausalLM": "modeling_gpt2_mq.GPT2LMHeadCustomModel",
        },
        "bos_token_id": eos_id,
        "embd_pdrop": 0.1,
        "eos_token_id": eos_id,
        "initializer_range": shape.init_std,
        "layer_norm_epsilon": 1e-05,
        "model_type": "gpt2",
        "n_embd": shape.n_embd,
        "n_head": shape.n_head,
        "n_inner": 4 * shape.n_embd,
        "n_layer": shape.n_layer,
        "n_positions": shape.n_positions,
        "reorder_and_upcast_attn": False,
        "resid_pdrop": 0.1,
        "scale_attn_by_inverse_layer_idx": False,
        "scale_attn_weights": True,
        "summary_activation": None,
        "summary_first_dropout": 0.1,
        "summary_proj_to_labels": True,
        "summary_type": "cls_index",
        "summary_use_proj": True,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": shape.vocab_size,
    }


def megatron_config(shape: Shape, eos_id: int, custom: bool) -> dict:
    """config.json as the bigcode fork's Megatron conversion wrote it (see engine.megatron_layout):
    `gpt_bigcode` with the fork's integer `attention_type` (2: multi-query, fused c_attn) and no
    `multi_query`; the custom branch adds `auto_map` to its shipped modeling code."""
    config = {
        "activation_function": "gelu_pytorch_tanh",
        "architectures": ["GPTBigCodeLMHeadModel"],
        "attention_softmax_in_fp32": True,
        "attention_type": 2,
        "attn_pdrop": 0.1,
        "bos_token_id": eos_id,
        "embd_pdrop": 0.1,
        "eos_token_id": eos_id,
        "inference_runner": 0,
        "initializer_range": shape.init_std,
        "layer_norm_epsilon": 1e-05,
        "model_type": "gpt_bigcode",
        "n_embd": shape.n_embd,
        "n_head": shape.n_head,
        "n_inner": 4 * shape.n_embd,
        "n_layer": shape.n_layer,
        "n_positions": shape.n_positions,
        "resid_pdrop": 0.1,
        "runner_max_sequence_length": None,
        "scale_attention_softmax_in_fp32": True,
        "scale_attn_weights": True,
        "summary_activation": None,
        "summary_first_dropout": 0.1,
        "summary_proj_to_labels": True,
        "summary_type": "cls_index",
        "summary_use_proj": True,
        "torch_dtype": "float32",
        "use_cache": True,
        "validate_runner_input": True,
        "vocab_size": shape.vocab_size,
    }
    if custom:
        config["auto_map"] = {
            "AutoConfig": "configuration_gpt_bigcode.GPTBigCodeConfig",
            "AutoModelForCausalLM": "modeling_gpt_bigcode.GPTBigCodeLMHeadModel",
        }
    return config


# Stands in for the modeling code the custom branch ships. fim-lsp must never import it; a test
# loads the checkpoint and checks that the marker this would write is absent.
_NEVER_RUN = '''"""Stand-in for shipped modeling code: fim-lsp must never execute checkpoint code."""
from pathlib import Path

Path(__file__).with_name("EXECUTED").write_text("checkpoint code was executed\\n")
raise RuntimeError("checkpoint code was executed")
'''


def random_weights(shape: Shape, mha: bool, layout: Layout, seed: int, zero_rows: list[int], dtype: str):
    """Tensors named as the layout names them, drawn from N(0, init_std) (LayerNorms at 1/0).

    gpt_bigcode stores `nn.Linear` weights [out, in] with a fused `c_attn`; the remote-code
    layout stores GPT-2 `Conv1D` weights [in, out] with `q_attn` + `kv_attn` for multi-query.
    Embedding rows of special tokens are zeroed so random models do not emit them forever.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    E, V, P = shape.n_embd, shape.vocab_size, shape.n_positions
    head_dim = E // shape.n_head
    kv = E if mha else head_dim
    out_dtype = getattr(torch, dtype)

    def normal(*size: int) -> torch.Tensor:
        return (torch.randn(*size, generator=gen) * shape.init_std).to(out_dtype)

    def ones(n: int) -> torch.Tensor:
        return torch.ones(n, dtype=out_dtype)

    def zeros(n: int) -> torch.Tensor:
        return torch.zeros(n, dtype=out_dtype)

    if layout in ("santacoder-megatron", "santacoder-megatron-custom"):
        from engine.megatron_layout import to_megatron_tensors

        # The same values as the gpt_bigcode layout for this seed, laid out as the fork's script
        # wrote them: main in Conv1D orientation (the script before 2023-02-20), custom in
        # Linear orientation (after), so both orientations are exercised.
        base = random_weights(shape, mha, "gpt_bigcode", seed, zero_rows, dtype)
        return to_megatron_tensors(base, conv1d=layout == "santacoder-megatron", split_qkv=False, n_embd=E)

    conv1d = layout == "santacoder-remote-code"

    def linear(out_features: int, in_features: int) -> torch.Tensor:
        weight = normal(out_features, in_features)  # [out, in]
        return weight.t().contiguous() if conv1d else weight

    tensors: dict[str, torch.Tensor] = {}
    wte = normal(V, E)
    wte[zero_rows] = 0
    tensors["transformer.wte.weight"] = wte
    tensors["transformer.wpe.weight"] = normal(P, E)
    for i in range(shape.n_layer):
        p = f"transformer.h.{i}."
        tensors[p + "ln_1.weight"], tensors[p + "ln_1.bias"] = ones(E), zeros(E)
        if conv1d and not mha:
            tensors[p + "attn.q_attn.weight"], tensors[p + "attn.q_attn.bias"] = linear(E, E), normal(E)
            tensors[p + "attn.kv_attn.weight"] = linear(2 * head_dim, E)
            tensors[p + "attn.kv_attn.bias"] = normal(2 * head_dim)
        else:
            tensors[p + "attn.c_attn.weight"] = linear(E + 2 * kv, E)
            tensors[p + "attn.c_attn.bias"] = normal(E + 2 * kv)
        tensors[p + "attn.c_proj.weight"], tensors[p + "attn.c_proj.bias"] = linear(E, E), normal(E)
        tensors[p + "ln_2.weight"], tensors[p + "ln_2.bias"] = ones(E), zeros(E)
        tensors[p + "mlp.c_fc.weight"], tensors[p + "mlp.c_fc.bias"] = linear(4 * E, E), normal(4 * E)
        tensors[p + "mlp.c_proj.weight"], tensors[p + "mlp.c_proj.bias"] = linear(E, 4 * E), normal(E)
    tensors["transformer.ln_f.weight"], tensors["transformer.ln_f.bias"] = ones(E), zeros(E)
    return tensors


def write_checkpoint(spec: CheckpointSpec, out: Path, cache_dir: Path | None = None,
                     progress: Callable[[str], None] | None = None) -> Path:
    """Write the checkpoint `spec` describes into `out` (created; must be empty or absent)."""
    from safetensors.torch import save_file

    if spec.shape not in SHAPES:
        raise ValueError(f"unknown shape {spec.shape!r}; choose one of {sorted(SHAPES)}")
    if spec.layout in SANTACODER_ONLY and spec.family != "santacoder":
        raise ValueError(f"the {spec.layout} layout is SantaCoder's; use --family santacoder with it")
    if spec.layout.startswith("santacoder-megatron") and spec.mha:
        raise ValueError(f"the {spec.layout} layout is multi-query only (the Megatron SantaCoder is MQA)")
    shape = SHAPES[spec.shape]
    cache_dir = cache_dir or default_cache_dir()
    say = progress or (lambda _msg: None)
    out.mkdir(parents=True, exist_ok=True)

    say(f"tokenizer: {spec.family}, {shape.tokenizer_vocab} tokens")
    tokenizer = cached_tokenizer(spec.family, shape.tokenizer_vocab, cache_dir)
    save_tokenizer(tokenizer, spec.family, out, shape.n_positions)
    special_ids = [tokenizer.token_to_id(t) for t in specials_for(spec.family)]
    eos_id = special_ids[0]

    if spec.layout == "gpt_bigcode":
        config = gpt_bigcode_config(shape, spec.family, spec.mha, eos_id)
    elif spec.layout.startswith("santacoder-megatron"):
        config = megatron_config(shape, eos_id, custom=spec.layout == "santacoder-megatron-custom")
    else:
        config = remote_code_config(shape, spec.mha, eos_id)
    config["torch_dtype"] = spec.dtype
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": eos_id, "eos_token_id": eos_id}, indent=2) + "\n"
    )

    say(f"weights: {shape.n_layer} layers x {shape.n_embd}, {'MHA' if spec.mha else 'MQA'}, {spec.layout}")
    tensors = random_weights(shape, spec.mha, spec.layout, spec.seed, special_ids, spec.dtype)
    if spec.layout.startswith("santacoder-megatron"):
        import torch

        # The fork's script saved a plain state dict with torch.save (pytorch_model.bin).
        torch.save(tensors, out / "pytorch_model.bin")
        if spec.layout == "santacoder-megatron-custom":
            for module in ("modeling_gpt_bigcode.py", "configuration_gpt_bigcode.py"):
                (out / module).write_text(_NEVER_RUN)
    else:
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "fim-lsp-kit.json").write_text(json.dumps({"kit_version": KIT_VERSION, **asdict(spec)}, indent=2) + "\n")
    return out


def write_config_only(spec: CheckpointSpec, out: Path) -> Path:
    """config.json (and generation_config.json) of the checkpoint `spec` describes, without weights
    or tokenizer: what `fim-lsp status` reads to plan memory before loading."""
    if spec.shape not in SHAPES:
        raise ValueError(f"unknown shape {spec.shape!r}; choose one of {sorted(SHAPES)}")
    shape = SHAPES[spec.shape]
    eos_id = 0 if spec.family == "starcoder" else shape.tokenizer_vocab - len(SANTACODER_SPECIALS)
    if spec.layout == "gpt_bigcode":
        config = gpt_bigcode_config(shape, spec.family, spec.mha, eos_id)
    elif spec.layout.startswith("santacoder-megatron"):
        config = megatron_config(shape, eos_id, custom=spec.layout == "santacoder-megatron-custom")
    else:
        config = remote_code_config(shape, spec.mha, eos_id)
    config["torch_dtype"] = spec.dtype
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": eos_id, "eos_token_id": eos_id}, indent=2) + "\n")
    return out


def ensure_checkpoint(spec: CheckpointSpec, cache_dir: Path | None = None) -> Path:
    """The cached checkpoint for `spec`, written on first use (atomically, safe across processes)."""
    cache_dir = cache_dir or default_cache_dir()
    final = cache_dir / "checkpoints" / spec.key()
    if (final / "fim-lsp-kit.json").exists():
        return final
    staging = final.with_name(final.name + f".tmp{id(spec)}-{__import__('os').getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    write_checkpoint(spec, staging, cache_dir)
    try:
        staging.rename(final)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return final


def main_make_checkpoint(args) -> int:
    """`fim-lsp make-checkpoint`: write a kit checkpoint to --out."""
    spec = CheckpointSpec(shape=args.shape, family=args.family, mha=args.mha, layout=args.layout,
                          seed=args.seed, dtype=args.dtype)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        print(f"fim-lsp: {out} is not empty; pass --force to overwrite", file=sys.stderr)
        return 2
    if getattr(args, "config_only", False) or spec.shape in CONFIG_ONLY_SHAPES:
        write_config_only(spec, out)
    else:
        write_checkpoint(spec, out, progress=lambda msg: print(f"make-checkpoint: {msg}", file=sys.stderr))
    print(out)
    return 0
