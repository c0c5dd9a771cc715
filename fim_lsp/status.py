"""`fim-lsp status`: which backend, device and dtype a model would use, and why, without loading it.

Reads the checkpoint's config and tokenizer only, so it answers in a second even for large
models, and says up front whether the weights would fit.
"""
from __future__ import annotations

import json
import sys

import torch

from engine.loading import CheckpointError, available_memory, check_fits, load_tokenizer, read_config, resolve_checkpoint
from engine.backends import RUNTIMES
from engine.select import INT8, choose_placement, resolve_model_name, tries_onnx
from engine.backends.torch_backend import DEFAULT_BUDGET_SHARE


def describe(model: str | None, backend: str = "auto", device: str = "auto", dtype: str = "auto",
             revision: str | None = None) -> dict:
    """What `load_backend` would choose for these options, as plain data."""
    if backend in RUNTIMES:
        return {"backend": backend, "module": RUNTIMES[backend], "why": f"--backend {backend} as asked"}
    name = resolve_model_name(model)
    onnx_note = ""
    if tries_onnx(name, backend, device, dtype):
        from engine.backends.onnx_backend import OnnxUnavailable, describe_onnx

        try:
            return describe_onnx(name, revision, "auto" if dtype == INT8 else dtype, explicit=backend == "onnx")
        except OnnxUnavailable as exc:
            onnx_note = f"ONNX Runtime not used: {exc}. "
    path = resolve_checkpoint(name, revision)
    config = read_config(path)
    tokenizer = load_tokenizer(path)
    placement = choose_placement(device, dtype, config.args.param_count())
    args = config.args
    free = available_memory(placement.device)
    check_fits(args, placement.dtype, free, "the GPU" if placement.device.type == "cuda" else "this machine")
    kv_size = torch.empty((), dtype=placement.kv_dtype).element_size()
    weight_bytes = args.param_count() * torch.empty((), dtype=placement.dtype).element_size()
    if placement.quantize:  # int8 matrices and head; the embedding tables stay in bf16 for the lookup
        from engine.quantize import int8_weight_bytes

        weight_bytes = int8_weight_bytes(args)
    return {
        "backend": "torch",
        "model": name,
        "path": str(path),
        "layout": config.layout,
        "attention": "multi-query" if args.multi_query else "multi-head",
        "params": args.param_count(),
        "n_ctx": args.n_positions,
        "fim_family": tokenizer.fim.family,
        "device": str(placement.device),
        "dtype": INT8 if placement.quantize else str(placement.dtype).removeprefix("torch."),
        "kv_dtype": str(placement.kv_dtype).removeprefix("torch."),
        "why": onnx_note + placement.why,
        "threads": torch.get_num_threads(),
        "weight_bytes": weight_bytes,
        "kv_bytes_per_token": args.kv_bytes_per_token(kv_size),
        "default_cache_budget_bytes": int((free - weight_bytes) * DEFAULT_BUDGET_SHARE),
    }


def main_status(args) -> int:
    """Print the choice as `key: value` lines (or one JSON object with --json)."""
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        info = describe(args.model, args.backend, args.device, args.dtype, args.revision)
    except CheckpointError as exc:
        print(f"fim-lsp status: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if key.endswith("bytes") or key.endswith("bytes_per_token"):
            value = f"{value / 2**20:,.1f} MiB" if value >= 2**20 else f"{value:,} B"
        elif key == "params":
            value = f"{value / 1e6:,.1f}M"
        print(f"{key}: {value}")
    return 0
