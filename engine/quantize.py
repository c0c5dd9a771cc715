"""Int8 weights for CPU decoding: every Linear of the network and the tied LM head.

A decode step on a CPU reads every weight once to produce one token, so its time is the weight
bytes over the memory bandwidth; int8 halves bf16's bytes. `quantize_int8` swaps the model's
`nn.Linear`s (and gives it an untied int8 copy of the LM head; the embedding lookup keeps the
bf16 table) for `Int8Linear`, from outside the model, in the manner of gpt-fast. Weights are
quantised symmetrically per output channel (one scale per row, int8 in [-127, 127]).

Activations are quantised **per row** (per token; asymmetric, a scale and a zero point a row), so
a token's result does not depend on what else is in the forward: a 1,000-token prefill chunk, a
speculative verification, a beam's rows and a one-token step all give a row the same numbers, to
the bit. The integer sums are exact, and the rest is elementwise, so every output is
`(float(sum_k xq[t,k] * wq[n,k]) * w_scale[n] - x_zero[t] * zero_terms[n]) * x_scale[t]`
whichever kernel adds the integers up (docs/benchmarks/cpu-decode.md, "Batch-invariant int8").

Where torch has FBGEMM (x86 builds: `torch.backends.quantized.engine` "x86" or "fbgemm"), an
`Int8Linear` prepacks its weight once and runs FBGEMM's dynamic int8 linear, which streams the
weight at the memory bandwidth. That kernel picks one activation scale for the whole call (from the
min and max of all rows fed together): that was what made cached and cache-less runs disagree. So
the rows are quantised here, per row, to integer-valued floats, and one extra "grid" row holding
the range's two ends (-64 and 63, or -128 and 127 in full range) is fed with them: the call's
min and max are then always the grid's, FBGEMM's scale is exactly 1.0 and its zero point fixed, it
re-quantises the integers exactly, and its output is the exact int32 sum times the weight scale.
The per-row scale is applied after. Full-range (8-bit) activations need int8 dot-product
instructions (VNNI, AMX) that add without saturating; elsewhere the 7-bit range is used.

Without FBGEMM an `Int8Linear` keeps the int8 weight and runs `torch._int_mm` (int8 x int8 ->
int32) on the same per-row quantised activations, for every row count: the same numbers as
FBGEMM's where neither saturates. (The weight-only GEMV `_weight_int8pack_mm` was faster at one
row, but a different kernel for few and many rows gives a row different numbers in a step and in a
prefill.)
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from engine import hardware
from engine.model import ModelArgs, Transformer

ACTIVATION_DTYPE = torch.bfloat16  # the activations between layers, the embeddings and the K/V


def quantize_rows(w: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-row int8: w [N, K] -> (q int8 [N, K], scale fp32 [N]) with w ~ q * scale[:, None]."""
    w = w.float()
    scale = w.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127  # [N]
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)  # [N, K]
    return q, scale


def activation_qmax(full_range: bool) -> int:
    """The top of a quantised activation's range [-qmax - 1, qmax]: 127 with 8 bits, 63 in FBGEMM's 7."""
    return 127 if full_range else 63


def quantize_activation_rows(x: Tensor, qmax: int) -> tuple[Tensor, Tensor, Tensor]:
    """Asymmetric per-row quantisation of activations, x ~ scale * (q - zero):
    x [T, K] -> (q integer-valued fp32 [T, K] in [-qmax - 1, qmax], scale fp32 [T, 1], zero fp32 [T, 1]).

    Each row's numbers depend on that row alone (min and max are exact). Asymmetric, because the
    MLP's second matrix gets GELU outputs (>= -0.17): a symmetric range would waste half its steps.
    """
    x = x.float()
    lo, hi = -qmax - 1, qmax
    x_min, x_max = torch.aminmax(x, dim=1, keepdim=True)  # [T, 1] each
    x_min, x_max = x_min.clamp(max=0), x_max.clamp(min=0)  # the range holds 0, so a zero row is exact
    scale = ((x_max - x_min) / (hi - lo)).clamp(min=torch.finfo(torch.float32).tiny)  # [T, 1]
    zero = lo - torch.round(x_min / scale)  # [T, 1]: the integer that stands for 0.0
    q = (torch.round(x / scale) + zero).clamp_(lo, hi)  # [T, K]
    return q, scale, zero


def fbgemm_available() -> bool:
    """Whether this torch build has FBGEMM's int8 linear (x86 builds; torch has marked its quantized
    tensors deprecated, so a later build without them falls back to the unpacked kernels)."""
    if torch.backends.quantized.engine not in ("x86", "fbgemm"):
        return False
    try:
        return callable(torch.ops.quantized.linear_prepack) and callable(torch.ops.quantized.linear_dynamic)
    except (AttributeError, RuntimeError):
        return False


class Int8Linear(nn.Module):
    """`y = x @ (weight * scales[:, None]).T + bias` over an int8 weight [N, K]; x: [T, K] -> y: [T, N].

    Activations are quantised per row (`quantize_activation_rows`), so row t of y depends on row t
    of x alone. `packed`: run FBGEMM on its prepacked copy of the weight and keep no `weight`
    buffer; else the weight stays an int8 buffer for `torch._int_mm`. `full_range`: 8-bit
    activations (only where the CPU's int8 dot products do not saturate); else 7-bit. The fp32
    `scales` and bf16 `bias` (N values each) are kept either way, so `weight_bytes` reads one layout.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, packed: bool = False, full_range: bool = False):
        super().__init__()
        q, scale = quantize_rows(weight)
        self.out_features, self.in_features = q.shape
        self.register_buffer("scales", scale)  # [N] fp32
        # what a zero point of 1 adds to output n: sum_k q[n, k] * scale[n]; rows subtract zero * this
        self.register_buffer("zero_terms", q.sum(dim=1, dtype=torch.int32).float() * scale, persistent=False)  # [N]
        self.register_buffer("bias", None if bias is None else bias.detach().to(ACTIVATION_DTYPE))
        self.packed = None
        self.reduce_range = not full_range
        self.qmax = activation_qmax(full_range)
        if packed:
            with warnings.catch_warnings():  # "quantized tensors are deprecated": known, see fbgemm_available
                warnings.simplefilter("ignore", UserWarning)
                qw = torch._make_per_channel_quantized_tensor(q, scale.double(),
                                                              torch.zeros_like(scale, dtype=torch.long), 0)
            self.packed = torch.ops.quantized.linear_prepack(qw, None)  # no bias: it is added after the row scales
            self.register_buffer("weight", None)
            # the grid row: the range's two ends, so FBGEMM's per-call min/max (and scale 1.0) never move
            grid = torch.zeros(1, q.shape[1])
            grid[0, 0], grid[0, 1] = -self.qmax - 1, self.qmax
            self.register_buffer("grid", grid, persistent=False)  # [1, K] fp32
        else:
            self.register_buffer("weight", q)  # [N, K] int8
            self.register_buffer("grid", None)

    def forward(self, x: Tensor) -> Tensor:
        T = x.shape[0]
        xq, x_scale, x_zero = quantize_activation_rows(x, self.qmax)  # [T, K] integers as fp32, [T, 1], [T, 1]
        if self.packed is not None:
            # [T + 1, K] -> [T + 1, N] fp32 = exact int32 sums * weight scale; the grid row dropped
            y = torch.ops.quantized.linear_dynamic(torch.cat([xq, self.grid]), self.packed, self.reduce_range)[:T]
        else:
            y = torch._int_mm(xq.to(torch.int8), self.weight.t()).float() * self.scales  # [T, N] fp32
        y = ((y - x_zero * self.zero_terms) * x_scale).to(ACTIVATION_DTYPE)  # [T, N]
        return y if self.bias is None else y + self.bias


def quantize_int8(model: Transformer, packed: bool | None = None, full_range: bool | None = None) -> Transformer:
    """Swap every nn.Linear for an Int8Linear and give the model an int8 LM head, in place.

    The rest (embeddings, layer norms) is cast to bf16, the activations' dtype. `packed`: run
    FBGEMM's kernel (None: where torch has it, and not on the meta device); `full_range`: 8-bit
    activations (None: where the CPU has int8 dot-product instructions). Returns `model`.
    """
    assert model.lm_head is None, "this model is already quantised"
    if packed is None:
        packed = fbgemm_available() and model.wte.weight.device.type == "cpu"
    if full_range is None:
        full_range = hardware.cpu_has_int8()
    # names, not modules: each bf16 weight is freed as soon as its int8 copy replaces it, so
    # quantising peaks at one matrix above the model rather than at the model twice
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    for name in linears:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        child = getattr(parent, attr)
        setattr(parent, attr, Int8Linear(child.weight.detach(), child.bias, packed, full_range))
        del child
    # the tied head's own int8 copy [V, E]
    model.lm_head = Int8Linear(model.wte.weight.detach(), None, packed, full_range)
    for module in model.modules():
        if isinstance(module, (nn.Embedding, nn.LayerNorm)):
            module.to(ACTIVATION_DTYPE)
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes of parameters and buffers (int8 weights, scales, biases, the embedding tables), FBGEMM's
    packed weights counted as their int8 bytes; FBGEMM's grid rows (one row of K floats a layer,
    a constant input, not a weight) are left out so both kernels' layouts count alike."""
    tensors = list(model.parameters()) + [b for name, b in model.named_buffers()
                                          if b is not None and not name.endswith("grid")]
    packed = sum(m.out_features * m.in_features for m in model.modules()
                 if isinstance(m, Int8Linear) and m.packed is not None)
    return sum(t.numel() * t.element_size() for t in tensors) + packed


def int8_weight_bytes(args: ModelArgs) -> int:
    """The bytes `weight_bytes` gives after `quantize_int8` for a model of this shape, without its weights.

    The model is built and quantised on the meta device: shapes and dtypes only, nothing allocated.
    """
    with torch.device("meta"):
        return weight_bytes(quantize_int8(Transformer(args)))
