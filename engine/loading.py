"""Checkpoints on disk (or in the hub's local cache) to a `Transformer` on a device.

Two layouts load: `gpt_bigcode` (what transformers writes: fused `c_attn`, `nn.Linear` weights
[out, in]) and SantaCoder's original remote-code layout (`model_type: gpt2` with
`attention_head_type`, GPT-2 `Conv1D` weights [in, out], `q_attn` + `kv_attn` for multi-query),
which we convert on load and never execute. Weights come from safetensors or, failing that, from
`pytorch_model.bin` read with `weights_only=True`. A checkpoint that cannot fit in memory is
refused from its config, before a weight is read. Every caller-facing failure is a
`CheckpointError` whose message is one line saying what to do.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from engine.fim import MissingSpecialToken
from engine.revisions import trained_headers, trained_without_fim
from engine.megatron_layout import (AmbiguousConfig, attention_kind, convert_megatron, is_megatron_config,
                                    megatron_layout_of)
from engine.model import ModelArgs, Transformer
from engine.tokenizer import CheckpointTokenizer

Layout = Literal["gpt_bigcode", "santacoder-remote-code", "santacoder-megatron", "santacoder-megatron-custom"]
Progress = Callable[[str, float], None]  # (message, fraction done in [0, 1])

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_FILES = ["config.json", "*.safetensors", "*.json", "*.txt", "pytorch_model*.bin"]


class CheckpointError(Exception):
    """A checkpoint that cannot be served; the message says what was wrong and what to do."""


@dataclass(frozen=True, slots=True)
class CheckpointConfig:
    """What config.json says, in our terms."""

    args: ModelArgs
    layout: Layout
    dtype: torch.dtype  # the dtype the weights are stored in
    attention_type: int | None = None  # the bigcode fork's kind (Megatron layouts only): 2 or 3


# ---------------------------------------------------------------------------------------------
# Where the files are


def resolve_checkpoint(model: str, revision: str | None = None) -> Path:
    """A local directory for `model`: a directory as given, or a hub id from the local hub cache.

    A hub id missing from the cache is fetched only where the hub is reachable; otherwise the
    error names the directory to pass instead.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        if revision:
            raise CheckpointError(f"--revision {revision} applies to hub ids, not to the directory {path}")
        return path
    if not _HUB_ID.match(model) or path.exists():
        raise CheckpointError(f"no checkpoint directory at {path}; pass --model DIR with config.json, "
                              f"tokenizer.json and weights")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - a dependency of transformers
        raise CheckpointError(f"{model} looks like a hub id but huggingface_hub is missing") from exc
    try:
        return Path(snapshot_download(model, revision=revision, allow_patterns=_HUB_FILES, local_files_only=True))
    except Exception:  # not cached: try the network below
        pass
    try:
        return Path(snapshot_download(model, revision=revision, allow_patterns=_HUB_FILES, etag_timeout=5))
    except Exception as exc:
        raise CheckpointError(
            f"{model}{'@' + revision if revision else ''} is not in the local hub cache and the hub is not "
            f"reachable ({type(exc).__name__}); download it where the network allows "
            f"(`huggingface-cli download {model} --local-dir DIR`) and pass --model DIR"
        ) from None


def read_config(path: Path) -> CheckpointConfig:
    """Parse config.json of a GPTBigCode checkpoint in either layout."""
    file = path / "config.json"
    if not file.is_file():
        raise CheckpointError(f"{path} has no config.json; is it a checkpoint directory?")
    try:
        config = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{file} is not valid JSON: {exc}") from None
    model_type = config.get("model_type")
    attention_type = None
    if is_megatron_config(config):
        layout = megatron_layout_of(config)
        try:
            attention_type = attention_kind(config)
        except AmbiguousConfig as exc:
            raise CheckpointError(f"{file}: {exc}") from None
        multi_query = True
    elif model_type == "gpt_bigcode":
        layout: Layout = "gpt_bigcode"
        multi_query = bool(config.get("multi_query", True))
    elif model_type == "gpt2" and "attention_head_type" in config:
        layout = "santacoder-remote-code"
        head_type = config["attention_head_type"]
        if head_type not in ("multiquery", "multihead"):
            raise CheckpointError(f"{file}: attention_head_type {head_type!r} is not one SantaCoder used")
        multi_query = head_type == "multiquery"
    else:
        raise CheckpointError(f"{file}: model_type {model_type!r} is not a GPTBigCode model "
                              f"(SantaCoder/StarCoder: gpt_bigcode)")
    try:
        args = ModelArgs(
            n_layer=int(config["n_layer"]),
            n_embd=int(config["n_embd"]),
            n_head=int(config["n_head"]),
            n_positions=int(config["n_positions"]),
            vocab_size=int(config["vocab_size"]),
            multi_query=multi_query,
            n_inner=config.get("n_inner"),
            layer_norm_epsilon=float(config.get("layer_norm_epsilon", 1e-5)),
            activation=config.get("activation_function", "gelu_pytorch_tanh"),
            scale_attn_weights=bool(config.get("scale_attn_weights", True)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{file} lacks or mangles a required key: {exc}") from None
    stored = getattr(torch, str(config.get("torch_dtype") or config.get("dtype") or "float32"), torch.float32)
    return CheckpointConfig(args=args, layout=layout, dtype=stored, attention_type=attention_type)


def load_tokenizer(path: Path) -> CheckpointTokenizer:
    """The checkpoint's tokenizer, with clear errors for missing files or special tokens. A revision
    trained without FIM (engine.revisions) gets its FIM tokens withheld, so it completes left to
    right: no prompt is built with tokens the model never learnt."""
    try:
        tokenizer = CheckpointTokenizer.from_dir(path)
    except (FileNotFoundError, MissingSpecialToken) as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if trained_without_fim(path) is not None:
        tokenizer.fim = dataclasses.replace(tokenizer.fim, prefix=None, middle=None, suffix=None)
    try:
        headers = trained_headers(path)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    if headers is not None:  # headers the tokenizer has but training never wrote are not used
        tokenizer.fim = dataclasses.replace(
            tokenizer.fim, filename=tokenizer.fim.filename if "filename" in headers else None,
            reponame=tokenizer.fim.reponame if "reponame" in headers else None,
            jupyter=tokenizer.fim.jupyter and "jupyter" in headers)
    return tokenizer


# ---------------------------------------------------------------------------------------------
# Memory


def available_memory(device: torch.device) -> int:
    """Bytes free for weights on `device` (MemAvailable on CPU, free memory on CUDA)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def check_fits(args: ModelArgs, target: torch.dtype, available: int, where: str) -> None:
    """Refuse a model whose weights in `target` cannot fit in `available` bytes."""
    params = args.param_count()
    size = torch.empty((), dtype=target).element_size()
    needed = int(params * size * 1.1)  # weights are cast as read; 10% for activations and the allocator
    if needed > available:
        raise CheckpointError(
            f"a {params / 1e9:.1f}B-parameter model needs about {needed / 2**30:.1f} GiB in "
            f"{str(target).removeprefix('torch.')} but {where} has {available / 2**30:.1f} GiB free; "
            f"choose a smaller model, --dtype bfloat16 or int8 (int8 weights on the CPU: --device cpu --dtype int8), "
            f"a GPU, or a remote server (--backend openai --url URL); `fim-lsp status --model M` prints the memory plan"
        )


# ---------------------------------------------------------------------------------------------
# Weights


def weight_files(path: Path) -> list[Path]:
    """The weight files of a checkpoint: safetensors (sharded or not), else pytorch_model*.bin."""
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index = path / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [path / s for s in shards]
        if (path / single).is_file():
            return [path / single]
    raise CheckpointError(f"{path} has no model.safetensors or pytorch_model.bin")


SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool}


def read_safetensors(file: Path, dtype: torch.dtype) -> Iterator[tuple[str, int, torch.Tensor]]:
    """(name, count of tensors, tensor cast to `dtype`) for each tensor of a safetensors file.

    Read with plain reads rather than a memory map: mapped pages stay in the process's resident
    memory until the map closes, so casting a fp32 checkpoint through a map peaked at the whole
    file plus the cast model (SantaCoder loaded as int8: 6.5 GiB); this way only one stored tensor
    is held beside the model.
    """
    with file.open("rb") as f:
        size = int.from_bytes(f.read(8), "little")
        if not 2 <= size <= 100_000_000:
            raise ValueError(f"not a safetensors file (header size {size})")
        header = json.loads(f.read(size))
        header.pop("__metadata__", None)
        for name, info in header.items():
            begin, end = info["data_offsets"]
            stored = SAFETENSORS_DTYPES.get(info["dtype"])
            if stored is None:
                raise ValueError(f"{name} has dtype {info['dtype']}, which fim-lsp does not read")
            data = bytearray(end - begin)
            f.seek(8 + size + begin)
            if f.readinto(data) != len(data):
                raise ValueError(f"the file ends inside {name} (truncated?)")
            t = torch.frombuffer(data, dtype=stored) if data else torch.empty(0, dtype=stored)
            yield name, len(header), t.reshape(info["shape"]).to(dtype)


def read_tensors(files: list[Path], dtype: torch.dtype, progress: Progress) -> dict[str, torch.Tensor]:
    """All tensors of the weight files on the CPU, each cast to `dtype` as it is read (so memory
    peaks at the model in `dtype` plus one stored tensor); pickles only through weights_only."""
    tensors: dict[str, torch.Tensor] = {}
    for i, file in enumerate(files):
        try:
            if file.suffix == ".safetensors":
                for k, (name, count, t) in enumerate(read_safetensors(file, dtype)):
                    tensors[name] = t
                    if k % 16 == 0:
                        progress(f"reading {file.name}", (i + k / count) / len(files) * 0.9)
            else:
                progress(f"reading {file.name}", i / len(files) * 0.9)
                stored = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
                tensors.update((name, t.to(dtype)) for name, t in stored.items())
        except pickle.UnpicklingError as exc:  # weights_only met a class or function: loading it could run code
            reason = next((line.strip() for line in str(exc).splitlines() if "GLOBAL" in line), "not plain tensors")
            raise CheckpointError(
                f"refused {file}: this pickle needs more than tensors to load, and loading it could run code "
                f"({reason}); fim-lsp loads only safetensors or pickles of plain tensors: convert the checkpoint "
                f"to model.safetensors where you trust its source") from None
        except Exception as exc:
            raise CheckpointError(f"cannot read {file}: {type(exc).__name__}: {exc}") from None
    return tensors


def convert_remote_code(tensors: dict[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    """SantaCoder's remote-code tensors to gpt_bigcode names and [out, in] weights.

    Conv1D stores [in, out]; multi-query splits the attention input projection into `q_attn`
    [E, E] and `kv_attn` [E, 2D], which gpt_bigcode fuses as `c_attn` = [q; k; v]. Multi-head
    GPT-2 stores `c_attn` as [Q of all heads; K of all; V of all] while gpt_bigcode interleaves
    per head ([q_h; k_h; v_h] for each h), so rows are regrouped.
    """
    out: dict[str, torch.Tensor] = {}
    H, D = args.n_head, args.head_dim
    for name, t in tensors.items():
        if name.endswith((".q_attn.weight", ".q_attn.bias")):
            prefix, kind = name.rsplit(".q_attn.", 1)
            kv = tensors[f"{prefix}.kv_attn.{kind}"]
            out[f"{prefix}.c_attn.{kind}"] = torch.cat([t, kv], dim=-1).t().contiguous() if kind == "weight" \
                else torch.cat([t, kv])
            continue
        if ".kv_attn." in name:
            continue  # fused above
        if name.endswith(".weight") and t.dim() == 2 and not name.startswith(("transformer.wte", "transformer.wpe")):
            t = t.t()  # Conv1D [in, out] -> Linear [out, in]
        if not args.multi_query and ".attn.c_attn." in name:
            t = t.reshape(3, H, D, *t.shape[1:]).transpose(0, 1).reshape(3 * H * D, *t.shape[1:])
        out[name] = t.contiguous()
    return out


def to_model_state(tensors: dict[str, torch.Tensor], layout: Layout, args: ModelArgs,
                   attention_type: int | None = None) -> dict[str, torch.Tensor]:
    """Checkpoint tensors to `Transformer` parameter names (the `transformer.` prefix dropped)."""
    if layout == "santacoder-remote-code":
        tensors = convert_remote_code(tensors, args)
    elif layout in ("santacoder-megatron", "santacoder-megatron-custom"):
        assert attention_type is not None, "a Megatron layout's config names its attention_type"
        try:
            tensors = convert_megatron(tensors, attention_type, args.n_embd, args.inner)
        except AmbiguousConfig as exc:
            raise CheckpointError(str(exc)) from None
    state = {}
    for name, t in tensors.items():
        if name == "lm_head.weight" or name.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # tied to wte; old checkpoints also carry causal-mask buffers
        state[name.removeprefix("transformer.")] = t
    return state


@dataclass(slots=True)
class LoadedModel:
    """A model ready to run, with what is needed to explain it."""

    model: Transformer
    tokenizer: CheckpointTokenizer
    path: Path
    layout: Layout
    stored_dtype: torch.dtype
    device: torch.device
    dtype: torch.dtype


def load_model(model: str, device: torch.device, dtype: torch.dtype, revision: str | None = None,
               progress: Progress | None = None, available: Callable[[torch.device], int] = available_memory,
               ) -> LoadedModel:
    """Resolve, validate and load a checkpoint onto `device` in `dtype`."""
    say = progress or (lambda _msg, _frac: None)
    path = resolve_checkpoint(model, revision)
    config = read_config(path)
    tokenizer = load_tokenizer(path)
    if tokenizer.tokenizer.get_vocab_size() > config.args.vocab_size:
        raise CheckpointError(f"{path}: the tokenizer has {tokenizer.tokenizer.get_vocab_size()} tokens but the "
                              f"model only {config.args.vocab_size}")
    where = "the GPU" if device.type == "cuda" else "this machine"
    check_fits(config.args, dtype, available(device), where)
    files = weight_files(path)
    tensors = read_tensors(files, dtype, say)
    say("converting weights", 0.9)
    try:
        state = to_model_state(tensors, config.layout, config.args, config.attention_type)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    with torch.device("meta"):
        net = Transformer(config.args)
    expected = set(net.state_dict())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the config (missing {sorted(missing)[:3]}, "
                              f"unexpected {sorted(unexpected)[:3]})")
    for name, t in state.items():
        want = tuple(net.state_dict()[name].shape)
        if tuple(t.shape) != want:
            raise CheckpointError(f"{path}: {name} has shape {tuple(t.shape)}, the config implies {want}")
        state[name] = t.to(device=device, dtype=dtype)
    net.load_state_dict(state, assign=True)
    net.eval().requires_grad_(False)
    say("loaded", 1.0)
    return LoadedModel(model=net, tokenizer=tokenizer, path=path, layout=config.layout,
                       stored_dtype=config.dtype, device=device, dtype=dtype)
