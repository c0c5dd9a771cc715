"""Choosing a backend, device and dtype for a model, and loading it: `load_backend`.

`auto` means: torch on CUDA when present (bf16 where supported, else fp16); otherwise, on a CPU
with int8 dot-product instructions (AVX-512 VNNI / AVX-VNNI / AMX) and a model of INT8_MIN_PARAMS
or more, torch with int8 weights (`--dtype int8`, engine.quantize: the fastest CPU decode
measured, docs/benchmarks/cpu-decode.md) unless `--model` is an ONNX export directory; otherwise ONNX
Runtime when an export of this checkpoint exists (or is made on first use, if configured);
otherwise torch on the CPU in bf16 when it has native bf16 matrix instructions (AVX-512 BF16 /
AMX) and fp32 otherwise. `auto` never picks 4-bit weights (`--dtype int4`, engine.int4): measured
slower than int8 and less faithful to fp32 (INT4_NOT_PICKED says so in every CPU choice). ONNX
Runtime that cannot serve (not installed, no or a stale or corrupt export) falls back to torch on
the CPU, and the reason is kept. Every choice carries a one-line reason that `fim-lsp status`
prints. Runtimes other than torch live in their own modules and are imported only when asked for
(the registry in `engine.backends`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from engine.api import Backend
from engine.cache import CacheConfig
from engine import hardware
from engine.loading import CheckpointError, Progress, load_model, read_config
from engine.speculative import default_speculate

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
INT8 = "int8"  # --dtype int8: int8 weights (engine.quantize), bf16 activations and K/V; CPU only
INT4 = "int4"  # --dtype int4: 4-bit group-wise weights (engine.int4), bf16 activations and K/V; CPU only
INT4_NOT_PICKED = ("int4 weights (--dtype int4) not picked by auto: measured slower than int8 at decode and "
                   "several times slower at prefill on an AVX2 CPU (torch's int4 kernel is compute-bound there), and "
                   "further from fp32's tokens (docs/benchmarks/cpu-decode.md, 4-bit weights)")
QUANTIZED = (INT8, INT4)
INT8_MIN_PARAMS = 100_000_000  # below this a step is call overhead, not weight reads: int8 measured slower
INT8_WHY = ("CPU with int8 dot-product instructions: int8 weights (engine.quantize), the fastest CPU decode "
            "measured (docs/benchmarks/cpu-decode.md)")


@dataclass(frozen=True, slots=True)
class Placement:
    """Where and in what precision the model runs, and why."""

    device: torch.device
    dtype: torch.dtype
    kv_dtype: torch.dtype  # the per-document K/V buffers
    why: str
    quantize: str = ""  # "int8" (engine.quantize) or "int4" (engine.int4) weights; `dtype` is then the activations'



def int8_pays(params: int | None) -> bool:
    """Whether `--dtype auto` on this CPU means int8 weights for a model of `params` (None: unknown)."""
    return hardware.cpu_has_int8() and (params is None or params >= INT8_MIN_PARAMS)


def local_params(name: str) -> int | None:
    """The parameter count of a local checkpoint directory (None for a hub id or no readable config)."""
    if not (Path(name) / "config.json").is_file():
        return None
    try:
        return read_config(Path(name)).args.param_count()
    except CheckpointError:
        return None


def choose_placement(device: str = "auto", dtype: str = "auto", params: int | None = None) -> Placement:
    """Resolve `auto` device and dtype; raise CheckpointError for ones this machine lacks.

    `params`: the model's parameter count where known (int8 weights pay only on large models).
    """
    if device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise CheckpointError(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise CheckpointError(f"--device {device} asked for CUDA but this torch sees no GPU; use --device cpu")
        if dev.type not in ("cpu", "cuda"):
            raise CheckpointError(f"--device {device}: only cpu and cuda are supported")
    if dtype == INT8:
        if dev.type != "cpu":
            raise CheckpointError("--dtype int8 is the CPU's int8-weight path; on CUDA use bfloat16 or float16")
        return Placement(dev, torch.bfloat16, torch.bfloat16, "--dtype int8 as asked", quantize=INT8)
    if dtype == INT4:
        if dev.type != "cpu":
            raise CheckpointError("--dtype int4 is the CPU's int4-weight path; on CUDA use bfloat16 or float16")
        from engine.int4 import int4_problem

        if problem := int4_problem():
            raise CheckpointError(f"--dtype int4 needs torch's CPU int4 kernels: {problem}; "
                                  f"use --dtype int8 (or bfloat16) instead")
        return Placement(dev, torch.bfloat16, torch.bfloat16, "--dtype int4 as asked", quantize=INT4)
    if dtype != "auto":
        if dtype not in DTYPES:
            raise CheckpointError(f"--dtype {dtype!r}: choose one of {sorted(DTYPES) + list(QUANTIZED)}")
        chosen = DTYPES[dtype]
        if dev.type == "cpu" and chosen == torch.float16:
            raise CheckpointError("--dtype float16 is slow and inexact on CPU; use bfloat16 or float32")
        return Placement(dev, chosen, kv_dtype_for(dev, chosen), f"--dtype {dtype} as asked")
    if dev.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Placement(dev, torch.bfloat16, torch.bfloat16, "CUDA with bf16 support")
        return Placement(dev, torch.float16, torch.float16, "CUDA without bf16: fp16")
    if int8_pays(params):
        return Placement(dev, torch.bfloat16, torch.bfloat16, f"{INT8_WHY}; {INT4_NOT_PICKED}", quantize=INT8)
    if hardware.cpu_has_bf16():
        return Placement(dev, torch.bfloat16, kv_dtype_for(dev, torch.bfloat16),
                         "CPU with AVX-512 BF16/AMX: bf16 measured faster than fp32 (docs/benchmarks/cpu-decode.md); "
                         + INT4_NOT_PICKED)
    return Placement(dev, torch.float32, torch.float32, f"CPU without native bf16: fp32; {INT4_NOT_PICKED}")


def kv_dtype_for(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The K/V buffers' dtype: the weights' dtype.

    With the query heads of multi-query attention folded into one GEMM (engine.model), bf16 K/V
    measured no slower than fp32 K/V at a 1k-token cache on this CPU (3.0 s vs 3.8 s a step on a
    heavily shared 2-core machine, SantaCoder shape), and they take half the memory.
    """
    return dtype


def load_backend(model: str | None = None, backend: str = "auto", device: str = "auto", dtype: str = "auto",
                 revision: str | None = None, progress: Progress | None = None, threads: int | None = None,
                 cache: CacheConfig | None = None, onnx=None, speculate: int | None = None) -> Backend:
    """Load `model` (a directory or hub id; None: the bundled default model) behind a Backend.

    `onnx`: an `engine.backends.onnx_backend.OnnxConfig` (where exports live, export on first use).
    `speculate`: prompt-lookup draft tokens per greedy step (0: off; None: `default_speculate`).
    """
    if threads is not None:
        if threads < 1:
            raise CheckpointError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    if backend not in ("auto", "torch", "onnx"):
        raise CheckpointError(f"--backend {backend!r} is not a local runtime (auto, torch, onnx): "
                              f"load it through engine.backends.load")
    name = resolve_model_name(model)
    fallback = ""
    if tries_onnx(name, backend, device, dtype):
        from engine.backends.onnx_backend import OnnxUnavailable, load_onnx_backend
        from engine.onnx_export import export

        exports = backend == "onnx" or bool(onnx and onnx.auto_export)
        try:
            chosen = load_onnx_backend(name, device, "auto" if dtype in QUANTIZED else dtype, revision, progress, cache,
                                       onnx, exporter=export if exports else None,
                                       speculate=speculate or 0)
            if speculate is None:
                chosen.speculate = default_speculate("onnx", chosen.info.device)
            return chosen
        except OnnxUnavailable as exc:
            fallback, device, name = f"ONNX Runtime not used: {exc}. ", "cpu", exc.checkpoint or name
    placement = choose_placement(device, dtype, local_params(name))
    loaded = load_model(name, placement.device, placement.dtype, revision=revision, progress=progress)
    from engine.backends.torch_backend import TorchBackend

    why = fallback + placement.why
    if placement.quantize == INT8:
        from engine.quantize import fbgemm_available, quantize_int8

        quantize_int8(loaded.model)
        why += ("; kernel: FBGEMM's int8 linear, activations quantised per token" if fbgemm_available() else
                "; kernel: torch's int8 x int8 matmul, activations quantised per token (this torch has no FBGEMM)")
    elif placement.quantize == INT4:
        from engine.int4 import GROUP_SIZE, quantize_int4

        quantize_int4(loaded.model)
        why += (f"; kernel: torch's CPU int4 matmul, groups of {GROUP_SIZE} input values, bf16 activations "
                f"(weight-only: a token's result does not depend on its batch)")
    if speculate is None:
        speculate = default_speculate("torch", placement.device.type)
    chosen = TorchBackend(loaded, cache=cache, kv_dtype=placement.kv_dtype, model_name=name,
                          why=why, speculate=speculate)
    if placement.quantize:
        chosen.info = replace(chosen.info, dtype=placement.quantize)
    return chosen


def tries_onnx(name: str, backend: str, device: str, dtype: str) -> bool:
    """Whether `load_backend` tries ONNX Runtime before torch for these options.

    --backend onnx does; auto does on a CPU-only machine, except where torch's int8 weights are
    the choice (--dtype int8 or int4, or --dtype auto on a CPU with int8 instructions) and `name` is a
    checkpoint rather than an ONNX export directory (a directory of graphs only ONNX Runtime runs).
    """
    if backend == "onnx":
        return True
    if backend != "auto" or device not in ("auto", "cpu") or torch.cuda.is_available():
        return False
    from engine.onnx_format import MANIFEST

    if (Path(name) / MANIFEST).is_file():
        return True
    return not (dtype in QUANTIZED or (dtype == "auto" and int8_pays(local_params(name))))


def resolve_model_name(model: str | None) -> str:
    """`model`, or the bundled default model directory when none is given."""
    if model is not None:
        return model
    if not (DEFAULT_MODEL_DIR / "config.json").is_file():
        raise CheckpointError(f"no --model given and no bundled default model in {DEFAULT_MODEL_DIR}; "
                              f"pass --model DIR (or a hub id)")
    return str(DEFAULT_MODEL_DIR)
