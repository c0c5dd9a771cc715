"""SantaCoder-Megatron's two published layouts: what their files say, and how they map to gpt_bigcode.

`bigcode/santacoder-megatron` was converted from BigCode's Megatron-LM checkpoint with the
conversion script of the bigcode fork of transformers (February 2023), before `gpt_bigcode` was
merged upstream. Facts taken from that fork's public history (its `gpt_bigcode` model and
`megatron_gpt_bigcode` conversion script):

- `model_type` is `gpt_bigcode`, as upstream, but the attention kind is the integer key
  `attention_type` (1 = multi-head, 2 = multi-query with one fused `c_attn` = [q; k; v],
  3 = multi-query with `q_attn` [E, E] and `kv_attn` [2D, E] = [k; v] kept apart); upstream's
  boolean `multi_query` came later. The script writes 2 unless told `--no_merge_qkv` (then 3).
- Tensor names are gpt_bigcode's (`transformer.h.N.attn.c_attn`, `mlp.c_fc`, ...) plus
  `lm_head.weight`, the tied embedding.
- Weight orientation changed on 2023-02-20 ("linear layers"): before, the fork's model used GPT-2
  `Conv1D` ([in, out]) and the script transposed Megatron's [out, in]; after, `nn.Linear`
  ([out, in]) and no transpose. The config does not say which, so the orientation is read from
  the shape of `mlp.c_fc.weight` ([E, I] or [I, E]), which is unambiguous while I != E.
- With `attention_type` 1 the fork's fused multi-head `c_attn` changed its row order on
  2023-03-02 (grouped [Q; K; V] became per-head [q_h; k_h; v_h]) and nothing in the files tells
  the two apart, so a multi-head Megatron config is refused rather than guessed.
- `main_custom` is the same conversion saved with `--custom_model`: the config gains an
  `auto_map` pointing at modeling code shipped beside the weights, and the activation is written
  as `gelu_pytorch_tanh` (the model card says older transformers need that value set by hand).
  fim-lsp never imports or executes that code: the layout is recognised from `auto_map`, the
  weights are converted here.

Uncertain, and handled by accepting both: whether the published `main` weights predate the
orientation change (both orientations load), and the exact activation spelling of each branch
(any tanh-approximated GELU spelling is accepted; they are the same function).
"""
from __future__ import annotations

from typing import Literal

import torch

MegatronLayout = Literal["santacoder-megatron", "santacoder-megatron-custom"]

MULTI_HEAD, MULTI_QUERY_FUSED, MULTI_QUERY_SPLIT = 1, 2, 3
ATTENTION_TYPES = {MULTI_QUERY_FUSED: "multi-query, fused c_attn", MULTI_QUERY_SPLIT: "multi-query, q_attn + kv_attn"}


class AmbiguousConfig(ValueError):
    """A Megatron config or weight set whose meaning cannot be read without guessing."""


def is_megatron_config(config: dict) -> bool:
    """True for a config written by the bigcode fork's Megatron conversion (it has `attention_type`)."""
    return config.get("model_type") == "gpt_bigcode" and "attention_type" in config


def megatron_layout_of(config: dict) -> MegatronLayout:
    """`santacoder-megatron-custom` where the config points at shipped modeling code, else the main layout."""
    return "santacoder-megatron-custom" if "auto_map" in config else "santacoder-megatron"


def attention_kind(config: dict) -> int:
    """The `attention_type` of a Megatron config (2 or 3); anything else raises AmbiguousConfig,
    with the key and value named on one line."""
    value = config.get("attention_type")
    if isinstance(value, bool) or not isinstance(value, int):
        raise AmbiguousConfig(f"attention_type {value!r} is not one of the fork's kinds 1, 2, 3; "
                              f"refusing to guess the attention")
    if value == MULTI_HEAD:
        raise AmbiguousConfig("attention_type 1 (multi-head) is ambiguous: the bigcode fork changed the "
                              "fused c_attn row order on 2023-03-02 and the files do not say which; "
                              "refusing to guess")
    if value not in ATTENTION_TYPES:
        raise AmbiguousConfig(f"attention_type {value!r} is unknown (the bigcode fork knows 1, 2, 3); "
                              f"refusing to guess")
    if "multi_query" in config and config["multi_query"] is not True:
        raise AmbiguousConfig(f"attention_type {value} (multi-query) contradicts multi_query "
                              f"{config['multi_query']!r}; refusing to guess")
    return value


def stored_as_conv1d(tensors: dict[str, torch.Tensor], n_embd: int, inner: int) -> bool:
    """Whether the weights are GPT-2 Conv1D [in, out] (before 2023-02-20) rather than Linear [out, in]."""
    fc = tensors.get("transformer.h.0.mlp.c_fc.weight")
    if fc is None:
        raise AmbiguousConfig("transformer.h.0.mlp.c_fc.weight is missing; cannot tell the weight orientation")
    if inner == n_embd:
        raise AmbiguousConfig(f"n_inner {inner} equals n_embd: the weight orientation cannot be read from shapes")
    shape = tuple(fc.shape)
    if shape == (n_embd, inner):
        return True
    if shape == (inner, n_embd):
        return False
    raise AmbiguousConfig(f"transformer.h.0.mlp.c_fc.weight has shape {shape}, neither [{n_embd}, {inner}] "
                          f"nor [{inner}, {n_embd}]")


def convert_megatron(tensors: dict[str, torch.Tensor], kind: int, n_embd: int, inner: int) -> dict[str, torch.Tensor]:
    """Megatron-converted tensors to gpt_bigcode's: [out, in] weights and one fused multi-query `c_attn`.

    `q_attn` [E, E] and `kv_attn` [2D, E] (in [out, in]) fuse as `c_attn` = [q; k; v] [E + 2D, E],
    the row order upstream's multi-query attention splits as (E, D, D).
    """
    conv1d = stored_as_conv1d(tensors, n_embd, inner)
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if conv1d and t.dim() == 2 and name.startswith("transformer.h."):
            t = t.t()  # Conv1D [in, out] -> Linear [out, in]
        out[name] = t.contiguous()
    if kind == MULTI_QUERY_SPLIT:
        for name in [n for n in out if ".attn.q_attn." in n]:
            prefix, part = name.rsplit(".attn.q_attn.", 1)
            kv_name = f"{prefix}.attn.kv_attn.{part}"
            if kv_name not in out:
                raise AmbiguousConfig(f"{name} has no {kv_name} beside it (attention_type 3 keeps both)")
            out[f"{prefix}.attn.c_attn.{part}"] = torch.cat([out.pop(name), out.pop(kv_name)])  # [E + 2D, ...]
    return out


def to_megatron_tensors(tensors: dict[str, torch.Tensor], conv1d: bool, split_qkv: bool,
                        n_embd: int) -> dict[str, torch.Tensor]:
    """The checkpoint kit's direction: gpt_bigcode multi-query tensors laid out as the fork's script
    wrote them (optionally Conv1D, optionally `q_attn` + `kv_attn`), with `lm_head.weight`."""
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if split_qkv and ".attn.c_attn." in name:
            prefix, part = name.rsplit(".attn.c_attn.", 1)
            q, kv = t[:n_embd], t[n_embd:]  # rows [E] and [2D] of [q; k; v]
            pieces = {f"{prefix}.attn.q_attn.{part}": q, f"{prefix}.attn.kv_attn.{part}": kv}
        else:
            pieces = {name: t}
        for piece_name, piece in pieces.items():
            if conv1d and piece.dim() == 2 and piece_name.startswith("transformer.h."):
                piece = piece.t()  # Linear [out, in] -> Conv1D [in, out]
            out[piece_name] = piece.contiguous()
    out["lm_head.weight"] = tensors["transformer.wte.weight"].clone()
    return out
