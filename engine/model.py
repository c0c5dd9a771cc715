"""The GPTBigCode network (SantaCoder, StarCoder) over an external, per-document KV buffer.

Only the network lives here, in the manner of gpt-fast: token + position embeddings, pre-LN
blocks with a fused `c_attn` (multi-query: one K/V head; or multi-head), a tanh-GELU MLP and the
LM head tied to the token embedding. The forward takes the positions it writes and the buffer it
writes them into, so a caller can reuse the K/V of any prefix it already holds. Parameter names
mirror the `gpt_bigcode` checkpoint (minus the `transformer.` prefix) so a state dict loads as is.
Compilation, device placement and the cache policy are the caller's business.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_TANH_GELUS = {"gelu_pytorch_tanh", "gelu_new", "gelu_fast"}


@dataclass(frozen=True, slots=True)
class ModelArgs:
    """The shape of a GPTBigCode model, read from its config.json."""

    n_layer: int
    n_embd: int
    n_head: int
    n_positions: int  # the context window in tokens
    vocab_size: int
    multi_query: bool = True  # one K/V head shared by all query heads
    n_inner: int | None = None  # MLP width; 4 * n_embd when None
    layer_norm_epsilon: float = 1e-5
    activation: str = "gelu_pytorch_tanh"
    scale_attn_weights: bool = True

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return 1 if self.multi_query else self.n_head

    @property
    def inner(self) -> int:
        return self.n_inner or 4 * self.n_embd

    def param_count(self) -> int:
        """Parameters of the network (the LM head is tied, so counted once)."""
        E, M, kv = self.n_embd, self.inner, self.kv_heads * self.head_dim
        block = 2 * 2 * E + E * (E + 2 * kv) + (E + 2 * kv) + E * E + E + E * M + M + M * E + E
        return self.vocab_size * E + self.n_positions * E + self.n_layer * block + 2 * E

    def kv_bytes_per_token(self, element_size: int) -> int:
        """Bytes of K and V one token occupies across all layers."""
        return self.n_layer * 2 * self.kv_heads * self.head_dim * element_size


class KVBuffer:
    """The keys and values of one document slot, written in place by `Transformer.forward`.

    `data`: [n_layer, 2 (k, v), kv_heads, capacity, head_dim]; kv_heads is 1 for multi-query
    (so a slot costs n_layer * 2 * capacity * head_dim elements) and n_head for multi-head.
    Position p of the slot holds the K/V of the token at position p of the cached sequence.
    """

    __slots__ = ("data",)

    def __init__(self, args: ModelArgs, capacity: int, dtype: torch.dtype, device: torch.device | str = "cpu"):
        self.data = torch.zeros(args.n_layer, 2, args.kv_heads, capacity, args.head_dim, dtype=dtype, device=device)

    @property
    def capacity(self) -> int:
        return self.data.shape[3]

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()

    @property
    def device(self) -> torch.device:
        return self.data.device

    def grow(self, capacity: int) -> None:
        """Reallocate to hold `capacity` positions, keeping what is written."""
        if capacity <= self.capacity:
            return
        shape = list(self.data.shape)
        shape[3] = capacity
        grown = torch.zeros(shape, dtype=self.data.dtype, device=self.data.device)
        grown[:, :, :, : self.capacity] = self.data  # [L, 2, KH, old_capacity, D]
        self.data = grown

    def copy_prefix_from(self, other: "KVBuffer", n: int) -> None:
        """Take positions [0, n) from another slot (same model; K/V depend only on the prefix)."""
        assert n <= min(self.capacity, other.capacity), f"cannot copy {n} positions between these slots"
        self.data[:, :, :, :n] = other.data[:, :, :, :n]  # [L, 2, KH, n, D]

    def copy_range_from(self, other: "KVBuffer", start: int, end: int) -> None:
        """Take positions [start, end) from another buffer whose positions before `start` equal ours."""
        assert end <= min(self.capacity, other.capacity), f"cannot copy up to {end} between these buffers"
        self.data[:, :, :, start:end] = other.data[:, :, :, start:end]  # [L, 2, KH, end - start, D]


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        kv = args.kv_heads * args.head_dim
        self.c_attn = nn.Linear(args.n_embd, args.n_embd + 2 * kv)
        self.c_proj = nn.Linear(args.n_embd, args.n_embd)

    def forward(self, x: Tensor, input_pos: Tensor, kv: Tensor, start: int) -> Tensor:
        """x: [T, E]; kv: this layer's [2, KH, capacity, D]; writes K/V at start..start+T-1."""
        return self.c_proj(self.attend(self.c_attn(x), input_pos, kv, start))

    def forward_rows(self, x: Tensor, input_pos: Tensor, kvs: list[Tensor]) -> Tensor:
        """x: [R, E], one token of each of R sequences; row r at input_pos[r] over kvs[r] (this
        layer's K/V of its sequence). The projections run once for all rows, attention per row."""
        qkv = self.c_attn(x)  # [R, E + 2*KH*D]
        positions = input_pos.tolist()
        out = torch.cat([self.attend(qkv[r:r + 1], input_pos[r:r + 1], kvs[r], positions[r])
                         for r in range(x.shape[0])])  # [R, E]
        return self.c_proj(out)

    def attend(self, qkv: Tensor, input_pos: Tensor, kv: Tensor, start: int) -> Tensor:
        """Attention of the projected tokens qkv [T, E + 2*KH*D] over kv (written at start..); [T, E]."""
        a = self.args
        T, H, D = qkv.shape[0], a.n_head, a.head_dim
        if a.multi_query:
            q, k, v = qkv.split((a.n_embd, D, D), dim=-1)  # [T, E], [T, D], [T, D]
            k, v = k.view(T, 1, D), v.view(T, 1, D)
            q = q.view(T, H, D)
        else:
            # gpt_bigcode's multi-head c_attn interleaves per head: [T, H, (q, k, v) * D]
            q, k, v = qkv.view(T, H, 3 * D).split(D, dim=-1)  # each [T, H, D]
        end = start + T
        kv[0, :, start:end] = k.transpose(0, 1).to(kv.dtype)  # [KH, T, D]
        kv[1, :, start:end] = v.transpose(0, 1).to(kv.dtype)
        keys, values = kv[0, :, :end], kv[1, :, :end]  # [KH, S, D], S = end
        # Query t sits at position input_pos[t] and sees keys 0..input_pos[t] (the cached prefix too).
        mask = None
        if T > 1:
            mask = torch.arange(end, device=qkv.device)[None, :] <= input_pos[:, None]  # [T, S]
        if a.multi_query:
            # One K/V head: fold the query heads into rows so attention is one GEMM per layer.
            q_rows = q.reshape(1, T * H, D)  # rows ordered (t, h)
            if mask is not None:
                mask = mask.repeat_interleave(H, dim=0)  # [T*H, S]
        else:
            q_rows = q.transpose(0, 1)  # [H, T, D]
        scale = D**-0.5 if a.scale_attn_weights else 1.0
        out = F.scaled_dot_product_attention(
            q_rows.unsqueeze(0).to(kv.dtype), keys.unsqueeze(0), values.unsqueeze(0), attn_mask=mask, scale=scale
        )[0].to(qkv.dtype)  # [KH, rows, D]
        if a.multi_query:
            return out.reshape(T, H * D)  # [1, T*H, D] -> [T, E]
        return out.transpose(0, 1).reshape(T, H * D)  # [H, T, D] -> [T, E]


class MLP(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.c_fc = nn.Linear(args.n_embd, args.inner)
        self.c_proj = nn.Linear(args.inner, args.n_embd)
        self.approximate = "tanh" if args.activation in _TANH_GELUS else "none"

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate=self.approximate))  # [T, E] -> [T, I] -> [T, E]


class Block(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.ln_1 = nn.LayerNorm(args.n_embd, eps=args.layer_norm_epsilon)
        self.attn = Attention(args)
        self.ln_2 = nn.LayerNorm(args.n_embd, eps=args.layer_norm_epsilon)
        self.mlp = MLP(args)

    def forward(self, x: Tensor, input_pos: Tensor, kv: Tensor, start: int) -> Tensor:
        x = x + self.attn(self.ln_1(x), input_pos, kv, start)
        return x + self.mlp(self.ln_2(x))

    def forward_rows(self, x: Tensor, input_pos: Tensor, kvs: list[Tensor]) -> Tensor:
        x = x + self.attn.forward_rows(self.ln_1(x), input_pos, kvs)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """GPTBigCode: `forward(input_ids [T], input_pos [T], kv, start) -> logits [T, V]`."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        if args.activation not in _TANH_GELUS | {"gelu"}:
            raise ValueError(f"unsupported activation_function {args.activation!r}")
        self.args = args
        self.wte = nn.Embedding(args.vocab_size, args.n_embd)
        self.wpe = nn.Embedding(args.n_positions, args.n_embd)
        self.h = nn.ModuleList(Block(args) for _ in range(args.n_layer))
        self.ln_f = nn.LayerNorm(args.n_embd, eps=args.layer_norm_epsilon)
        self.lm_head: nn.Module | None = None  # None: the head tied to wte; engine.quantize sets an int8 copy

    def forward(self, input_ids: Tensor, input_pos: Tensor, kv: KVBuffer, start: int,
                last_only: bool = False) -> Tensor:
        """Run tokens at positions start..start+T-1 over the K/V already in `kv` at 0..start-1.

        input_ids, input_pos: [T] (input_pos = arange(start, start + T)); returns logits
        [T, V], or [1, V] for the last position when `last_only` (what prefill needs).
        """
        T = input_ids.shape[0]
        assert start + T <= kv.capacity, f"slot holds {kv.capacity} positions, asked for {start + T}"
        assert start + T <= self.args.n_positions, f"position {start + T - 1} is past the context window"
        x = self.wte(input_ids) + self.wpe(input_pos)  # [T, E]
        for i, block in enumerate(self.h):
            x = block(x, input_pos, kv.data[i], start)
        if last_only:
            x = x[-1:]
        return self.head(x)

    def forward_rows(self, input_ids: Tensor, input_pos: Tensor, kvs: list[KVBuffer]) -> Tensor:
        """One token for each of R sequences that share only the weights (a beam's lines): row r
        is input_ids[r] at position input_pos[r] over kvs[r]'s K/V at 0..input_pos[r]-1, and is
        written there. input_ids, input_pos: [R]; logits [R, V]. Every weight is read once for all
        rows, so on a CPU (memory-bound at one token) R rows cost little more than one."""
        assert len(kvs) == input_ids.shape[0] == input_pos.shape[0], "one K/V buffer per row"
        for kv, pos in zip(kvs, input_pos.tolist()):
            assert pos < min(kv.capacity, self.args.n_positions), f"position {pos} is past a row's buffer or window"
        x = self.wte(input_ids) + self.wpe(input_pos)  # [R, E]
        for i, block in enumerate(self.h):
            x = block.forward_rows(x, input_pos, [kv.data[i] for kv in kvs])
        return self.head(x)

    def head(self, x: Tensor) -> Tensor:
        """Final layer norm and LM head: [T, E] -> logits [T, V]."""
        x = self.ln_f(x)
        if self.lm_head is not None:
            return self.lm_head(x)  # [T, V]
        return F.linear(x, self.wte.weight)  # [T, V], tied head
