"""Int8 weights for CPU decoding: every Linear of the network and the tied LM head.

A decode step on a CPU reads every weight once to produce one token, so its time is the weight
bytes over the memory bandwidth; int8 halves bf16's bytes. `quantize_int8` swaps the model's
`nn.Linear`s (and gives it an untied int8 copy of the LM head; the embedding lookup keeps the
bf16 table) for `Int8Linear`, from outside the model, in the manner of gpt-fast. Weights are
quantised symmetrically per output channel (one scale per row, int8 in [-127, 127]).

Where torch has FBGEMM (x86 builds: `torch.backends.quantized.engine` "x86" or "fbgemm"), an
`Int8Linear` prepacks its weight once and runs FBGEMM's dynamic int8 linear for every row count:
the activations are quantised per call (one scale for the rows fed together), multiplied as
int8 x int8 with int32 sums, and scaled back, bias fused. It streams the weight at the memory
bandwidth: SantaCoder's four matrices of one layer take 1.3 ms at 1 to 4 rows against 2.7-3.6 ms
for the weight-only GEMV below, and 70 ms at 512 rows against 99 for the int8 x int8 GEMM
(2 threads, weights rotated beyond the caches; docs/benchmarks/cpu-decode.md). Full-range activations need
int8 dot-product instructions (VNNI, AMX) that add without saturating; elsewhere FBGEMM's 7-bit
range is used.

Without FBGEMM an `Int8Linear` keeps the int8 weight and runs two kernels of its own:
- few rows (a decode step, a short speculative verification): the weight-only GEMV
  `aten._weight_int8pack_mm` with bf16 activations;
- many rows (prefill): activations quantised per row too, `torch._int_mm` (int8 x int8 -> int32)
  then both scales.
docs/benchmarks/cpu-decode.md has the measurements behind these choices and the greedy agreement with fp32.
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from engine import hardware
from engine.model import ModelArgs, Transformer

GEMV_MAX_ROWS = 4  # up to this many rows the weight-only GEMV beats the int8 x int8 GEMM (measured)
GEMV_K_MULTIPLE = 32  # the GEMV returned garbage, silently, for inner sizes off a multiple of 16 (seen: 40, 100)
ACTIVATION_DTYPE = torch.bfloat16  # what the weight-only kernel multiplies the int8 rows with


def quantize_rows(w: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-row int8: w [N, K] -> (q int8 [N, K], scale fp32 [N]) with w ~ q * scale[:, None]."""
    w = w.float()
    scale = w.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127  # [N]
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)  # [N, K]
    return q, scale


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

    `packed`: run FBGEMM on its prepacked copy of the weight and bias, and keep no `weight` buffer;
    else the weight stays an int8 buffer for the GEMV / GEMM pair. `full_range`: FBGEMM may use all
    8 bits of the activations (only where the CPU's int8 dot products do not saturate). The bf16
    `scales` and `bias` (N values each) are kept either way, so `weight_bytes` reads one layout.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, packed: bool = False, full_range: bool = False):
        super().__init__()
        q, scale = quantize_rows(weight)
        self.out_features, self.in_features = q.shape
        self.register_buffer("scales", scale.to(ACTIVATION_DTYPE))  # [N]
        self.register_buffer("bias", None if bias is None else bias.detach().to(ACTIVATION_DTYPE))
        self.packed = None
        self.reduce_range = not full_range
        if packed:
            with warnings.catch_warnings():  # "quantized tensors are deprecated": known, see fbgemm_available
                warnings.simplefilter("ignore", UserWarning)
                qw = torch._make_per_channel_quantized_tensor(q, scale.double(), torch.zeros_like(scale, dtype=torch.long), 0)
            self.packed = torch.ops.quantized.linear_prepack(qw, None if bias is None else bias.detach().float())
            self.register_buffer("weight", None)
        else:
            self.register_buffer("weight", q)  # [N, K] int8
        self.gemv = not packed and q.shape[1] % GEMV_K_MULTIPLE == 0  # else the int8 x int8 GEMM (unpacked)

    def forward(self, x: Tensor) -> Tensor:
        if self.packed is not None:
            y = torch.ops.quantized.linear_dynamic(x.float(), self.packed, self.reduce_range)  # [T, N] fp32
            return y.to(ACTIVATION_DTYPE)
        x = x.to(ACTIVATION_DTYPE)
        if self.gemv and x.shape[0] <= GEMV_MAX_ROWS:
            y = torch.ops.aten._weight_int8pack_mm(x, self.weight, self.scales)  # [T, N] bf16
        else:
            y = int8_gemm(x, self.weight, self.scales.float()).to(ACTIVATION_DTYPE)  # [T, N]
        return y if self.bias is None else y + self.bias


def int8_gemm(x: Tensor, q: Tensor, w_scale: Tensor) -> Tensor:
    """x [T, K] float, q int8 [N, K], w_scale [N] -> fp32 [T, N], activations quantised per row."""
    x_scale = x.float().abs().amax(dim=1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny) / 127  # [T, 1]
    xq = torch.round(x.float() / x_scale).to(torch.int8)  # [T, K]
    return torch._int_mm(xq, q.t()).float() * x_scale * w_scale  # int32 [T, N] -> fp32


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
    model.lm_head = Int8Linear(model.wte.weight.detach(), None, packed, full_range)  # the tied head's own int8 copy [V, E]
    for module in model.modules():
        if isinstance(module, (nn.Embedding, nn.LayerNorm)):
            module.to(ACTIVATION_DTYPE)
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes of parameters and buffers (int8 weights, scales, biases, the embedding tables), FBGEMM's
    packed weights counted as their int8 bytes."""
    tensors = list(model.parameters()) + [b for b in model.buffers() if b is not None]
    packed = sum(m.out_features * m.in_features for m in model.modules()
                 if isinstance(m, Int8Linear) and m.packed is not None)
    return sum(t.numel() * t.element_size() for t in tensors) + packed


def int8_weight_bytes(args: ModelArgs) -> int:
    """The bytes `weight_bytes` gives after `quantize_int8` for a model of this shape, without its weights.

    The model is built and quantised on the meta device: shapes and dtypes only, nothing allocated.
    """
    with torch.device("meta"):
        return weight_bytes(quantize_int8(Transformer(args)))
