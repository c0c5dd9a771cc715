"""Int4 weights for the CPU: every Linear of the network and the tied LM head in 4 bits, group-wise.

`quantize_int4` swaps the model's `nn.Linear`s (and gives it an untied int4 copy of the LM head;
the embedding lookup keeps the bf16 table) for `Int4Linear`, from outside the model, as
`engine.quantize.quantize_int8` does for int8. Each weight row is cut into groups of
`GROUP_SIZE` consecutive input values; a group keeps its own scale and offset (asymmetric: 16
levels from the group's min to its max), so w ~ (q - 8) * scale + zero with q in [0, 15].

The product runs through torch's CPU int4 kernels: `_convert_weight_to_int4pack_for_cpu` packs
two values a byte once at load, `_weight_int4pack_mm_for_cpu` multiplies bf16 activations by the
packed weight, dequantising group by group. Only the weights are quantised: the activations stay
bf16, so a row's result depends on that row alone, whatever else is in the call (checked to the
bit for 1..512 rows, tests/test_int4.py). fp32 activations ran 10-30x slower on an AVX2 CPU
(no vectorised fp32 path there), so the activations, embeddings and K/V are bf16.

Why groups of 64: on SantaCoder's 2048 x 8192 MLP weight (2 threads, AVX2) one-row products took
1.98 / 1.71 / 1.55 ms at groups of 32 / 64 / 128 (the kernel is compute-bound on such a CPU, and a
group costs a dequantisation step), while the weights' quantisation error grows with the group
(docs/benchmarks/cpu-decode.md, "4-bit weights"); 64 sits between, and divides every
matrix width of the GPTBigCode shapes we serve (n_embd and n_inner are multiples of 64).
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from engine.model import ModelArgs, Transformer

ACTIVATION_DTYPE = torch.bfloat16  # the activations between layers, the embeddings, the K/V and the scales
GROUP_SIZE = 64  # input values that share one scale and offset (see the module docstring)
GROUP_SIZES = (32, 64, 128, 256)  # what the kernel accepts
OUT_MULTIPLE = 16  # the packing takes output rows 16 at a time
PACK_OP, MATMUL_OP = "_convert_weight_to_int4pack_for_cpu", "_weight_int4pack_mm_for_cpu"  # torch.ops.aten


class Int4Unavailable(RuntimeError):
    """This torch build cannot run the int4 path (no CPU int4 kernels, or they fail)."""


@functools.cache
def _probe(pack_op: str, matmul_op: str) -> str:
    """'' when both ops exist and multiply a small matrix right; else what went wrong."""
    try:  # torch.ops.aten raises for an op this build lacks
        pack, matmul = getattr(torch.ops.aten, pack_op), getattr(torch.ops.aten, matmul_op)
    except (AttributeError, RuntimeError):
        return f"this torch ({torch.__version__}) has no torch.ops.aten.{pack_op} / {matmul_op}"
    try:
        w = torch.arange(16 * 64, dtype=torch.float32).reshape(16, 64) % 16 - 8  # integers in [-8, 7]
        q, sz = quantize_groups(w, 32)
        y = matmul(torch.ones(1, 64, dtype=ACTIVATION_DTYPE), pack(q, 1), 32, sz)  # [1, 16]
    except RuntimeError as exc:
        return f"torch's CPU int4 kernel failed on this machine: {exc}"
    if not torch.equal(y.float(), w.sum(dim=1, keepdim=True).t()):
        return "torch's CPU int4 kernel gave wrong sums on this machine"
    return ""


def int4_problem() -> str:
    """Why this machine cannot run `--dtype int4` ('' when it can)."""
    return _probe(PACK_OP, MATMUL_OP)


def require_int4() -> None:
    """Raise Int4Unavailable, naming what to use instead, when the int4 kernels are not there."""
    problem = int4_problem()
    if problem:
        raise Int4Unavailable(f"--dtype int4 needs torch's CPU int4 kernels: {problem}; "
                              f"use --dtype int8 (or bfloat16) instead")


def quantize_groups(w: Tensor, group_size: int) -> tuple[Tensor, Tensor]:
    """Asymmetric 4-bit groups along the input dimension: w [N, K] -> (q int32 [N, K] in [0, 15],
    scales_and_zeros bf16 [K / group_size, N, 2]) with w ~ (q - 8) * scale + zero, group by group.

    The scale and zero are rounded to bf16 first, and q is chosen against the rounded values, so
    the stored numbers are the ones the levels were fitted to.
    """
    N, K = w.shape
    assert group_size in GROUP_SIZES, f"group size {group_size}: the kernel takes {GROUP_SIZES}"
    assert K % group_size == 0, f"input width {K} is not a multiple of the group size {group_size}"
    groups = w.detach().float().reshape(N, K // group_size, group_size)  # [N, G, g]
    lo, hi = torch.aminmax(groups, dim=2, keepdim=True)  # [N, G, 1] each
    scale = ((hi - lo) / 15).clamp(min=1e-6).to(ACTIVATION_DTYPE).float()  # [N, G, 1]
    zero = (lo + 8 * scale).to(ACTIVATION_DTYPE).float()  # [N, G, 1]: the value of level 8
    q = (torch.round((groups - zero) / scale) + 8).clamp_(0, 15).to(torch.int32).reshape(N, K)  # [N, K]
    scales_and_zeros = torch.cat([scale, zero], dim=2).transpose(0, 1).contiguous()  # [G, N, 2]
    return q, scales_and_zeros.to(ACTIVATION_DTYPE)


def dequantize_groups(q: Tensor, scales_and_zeros: Tensor) -> Tensor:
    """The weight the kernel multiplies by: q int32 [N, K], scales_and_zeros [G, N, 2] -> fp32 [N, K]."""
    N, K = q.shape
    G = scales_and_zeros.shape[0]
    scale = scales_and_zeros[..., 0].float().t().unsqueeze(2)  # [N, G, 1]
    zero = scales_and_zeros[..., 1].float().t().unsqueeze(2)  # [N, G, 1]
    return ((q.reshape(N, G, K // G).float() - 8) * scale + zero).reshape(N, K)


class Int4Linear(nn.Module):
    """`y = x @ W.T + bias` over a packed int4 weight W [N, K] with group-wise scales; x: [T, K] -> y: [T, N] bf16.

    Weight-only: x stays bf16, so row t of y depends on row t of x alone.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, group_size: int = GROUP_SIZE):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        if self.out_features % OUT_MULTIPLE:
            raise Int4Unavailable(f"--dtype int4: torch's int4 packing needs a multiple of {OUT_MULTIPLE} output "
                                  f"rows, this matrix has {self.out_features}; use --dtype int8 for this model")
        self.group_size = group_size
        q, scales_and_zeros = quantize_groups(weight, group_size)
        pack = getattr(torch.ops.aten, PACK_OP)
        self.register_buffer("packed", pack(q, 1))  # [N, K / 2] uint8, two values a byte
        self.register_buffer("scales_and_zeros", scales_and_zeros)  # [K / group_size, N, 2] bf16
        self.register_buffer("bias", None if bias is None else bias.detach().to(ACTIVATION_DTYPE))

    def forward(self, x: Tensor) -> Tensor:
        matmul = getattr(torch.ops.aten, MATMUL_OP)
        y = matmul(x.to(ACTIVATION_DTYPE).contiguous(), self.packed, self.group_size, self.scales_and_zeros)  # [T, N]
        return y if self.bias is None else y + self.bias


def group_size_for(in_features: int, group_size: int = GROUP_SIZE) -> int:
    """`group_size`, or the largest accepted size below it that divides `in_features`."""
    for g in sorted((s for s in GROUP_SIZES if s <= group_size), reverse=True):
        if in_features % g == 0:
            return g
    raise Int4Unavailable(f"--dtype int4: a matrix {in_features} wide is not a multiple of {min(GROUP_SIZES)}; "
                          f"use --dtype int8 for this model")


def quantize_int4(model: Transformer, group_size: int = GROUP_SIZE) -> Transformer:
    """Swap every nn.Linear for an Int4Linear and give the model an int4 LM head, in place.

    The rest (embeddings, layer norms) is cast to bf16, the activations' dtype. Raises
    Int4Unavailable where this torch has no working CPU int4 kernel. Returns `model`.
    """
    assert model.lm_head is None, "this model is already quantised"
    require_int4()
    # names, not modules: each weight is freed as soon as its int4 copy replaces it
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    shapes = [model.get_submodule(name).weight.shape for name in linears] + [model.wte.weight.shape]
    for n, k in shapes:  # refuse before the first swap, so a refused model is left as it was
        group_size_for(k, group_size)
        if n % OUT_MULTIPLE:
            raise Int4Unavailable(f"--dtype int4: torch's int4 packing needs a multiple of {OUT_MULTIPLE} output "
                                  f"rows, a matrix of this model has {n}; use --dtype int8 for this model")
    for name in linears:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        child = getattr(parent, attr)
        g = group_size_for(child.in_features, group_size)
        setattr(parent, attr, Int4Linear(child.weight.detach(), child.bias, g))
        del child
    model.lm_head = Int4Linear(model.wte.weight.detach(), None, group_size_for(model.args.n_embd, group_size))
    for module in model.modules():
        if isinstance(module, (nn.Embedding, nn.LayerNorm)):
            module.to(ACTIVATION_DTYPE)
    return model


def int4_weight_bytes(args: ModelArgs, group_size: int = GROUP_SIZE) -> int:
    """The bytes `engine.quantize.weight_bytes` gives after `quantize_int4` for a model of this shape,
    counted from the shapes (the pack op has no meta-device kernel): per matrix [N, K] N * K / 2
    packed bytes, K / g * N * 2 bf16 scales and offsets and N bf16 biases; the LM head's int4 copy;
    the embedding tables and layer norms in bf16."""
    with torch.device("meta"):
        model = Transformer(args)
    total = 0
    matrices = [(m.out_features, m.in_features, m.bias is not None)
                for m in model.modules() if isinstance(m, nn.Linear)] + [(args.vocab_size, args.n_embd, False)]
    for n, k, has_bias in matrices:
        g = group_size_for(k, group_size)
        total += n * k // 2 + (k // g) * n * 2 * 2 + (n * 2 if has_bias else 0)
    linear_params = {id(p) for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters()}
    total += sum(p.numel() * 2 for p in model.parameters() if id(p) not in linear_params)  # bf16
    return total
