"""`fim-lsp status`: which backend, device and dtype a model would use, and why, without loading it.

Reads the checkpoint's config and tokenizer only, so it answers in a second even for large
models. The memory plan (engine.memory_plan) comes from the config alone, before the tokenizer:
a model whose chosen placement does not fit is refused with the plan and the alternatives.
"""
from __future__ import annotations

import json
import sys

import torch

from engine.loading import CheckpointError, available_memory, load_tokenizer, read_config, resolve_checkpoint
from engine.backends import RUNTIMES
from engine.revisions import trained_without_fim
from engine.memory_plan import GIB, MemoryPlan, Place, alternatives, memory_plan, render_plan, visible_places
from engine.select import INT4, QUANTIZED, choose_placement, resolve_model_name, tries_onnx
from engine.backends.torch_backend import DEFAULT_BUDGET_SHARE


class DoesNotFit(CheckpointError):
    """The chosen placement cannot hold the model; the message carries the plan and the alternatives."""


def plan_placement(args, placement, places: tuple[Place, ...]) -> MemoryPlan:
    """The memory plan for `args`, refusing (DoesNotFit) when `placement` cannot hold the weights
    and one window of K/V."""
    from engine.quantize import int8_weight_bytes

    int4_bytes = None
    if placement.quantize == INT4:  # the int4 row only when asked for: auto never picks it (engine.select)
        from engine.int4 import int4_weight_bytes

        int4_bytes = int4_weight_bytes(args)
    plan = memory_plan(args, places, int8_weight_bytes(args), int4_bytes)
    chosen = placement.quantize or str(placement.dtype).removeprefix("torch.")
    place = plan.place_of(placement.device.type, placement.device.index)
    if place is None or chosen not in plan.fits[place.name]:
        where = place.name if place is not None else str(placement.device)
        free = f"{place.free / GIB:,.1f} GiB free" if place is not None else "not visible"
        lines = [f"the model does not fit: {chosen} on {where} needs {plan.needed(chosen) / GIB:,.1f} GiB "
                 f"(weights + one {plan.n_ctx:,}-token window of K/V), {where} has {free}",
                 *render_plan(plan), "alternatives:", *(f"  {a}" for a in alternatives(plan))]
        raise DoesNotFit("\n".join(lines))
    return plan


def describe(model: str | None, backend: str = "auto", device: str = "auto", dtype: str = "auto",
             revision: str | None = None, places: tuple[Place, ...] | None = None) -> dict:
    """What `load_backend` would choose for these options, as plain data. `places`: the GPUs and
    RAM with their free bytes (default: this machine's, now)."""
    if backend in RUNTIMES:
        return {"backend": backend, "module": RUNTIMES[backend], "why": f"--backend {backend} as asked"}
    name = resolve_model_name(model)
    onnx_note = ""
    if tries_onnx(name, backend, device, dtype):
        from engine.backends.onnx_backend import OnnxUnavailable, describe_onnx

        try:
            return describe_onnx(name, revision, "auto" if dtype in QUANTIZED else dtype, explicit=backend == "onnx")
        except OnnxUnavailable as exc:
            onnx_note = f"ONNX Runtime not used: {exc}. "
    path = resolve_checkpoint(name, revision)
    config = read_config(path)
    args = config.args
    placement = choose_placement(device, dtype, args.param_count())
    plan = plan_placement(args, placement, visible_places() if places is None else places)
    tokenizer = load_tokenizer(path)
    free = available_memory(placement.device) if places is None else plan.place_of(
        placement.device.type, placement.device.index).free
    kv_size = torch.empty((), dtype=placement.kv_dtype).element_size()
    weight_bytes = args.param_count() * torch.empty((), dtype=placement.dtype).element_size()
    if placement.quantize:  # int8/int4 matrices and head; the embedding tables stay in bf16 for the lookup
        weight_bytes = plan.weights[placement.quantize]
    return {
        "backend": "torch",
        "model": name,
        "path": str(path),
        "layout": config.layout,
        "attention": "multi-query" if args.multi_query else "multi-head",
        "params": args.param_count(),
        "n_ctx": args.n_positions,
        "fim_family": tokenizer.fim.family,
        "fim": "yes" if tokenizer.fim.has_fim else (trained_without_fim(path) or "no FIM tokens: left-to-right"),
        "device": str(placement.device),
        "dtype": placement.quantize or str(placement.dtype).removeprefix("torch."),
        "kv_dtype": str(placement.kv_dtype).removeprefix("torch."),
        "why": onnx_note + placement.why,
        "threads": torch.get_num_threads(),
        "weight_bytes": weight_bytes,
        "kv_bytes_per_token": args.kv_bytes_per_token(kv_size),
        "default_cache_budget_bytes": int((free - weight_bytes) * DEFAULT_BUDGET_SHARE),
        "memory_plan": {"weights": plan.weights, "kv_per_token": plan.kv_per_token,
                        "kv_window": {d: plan.kv_window(d) for d in plan.kv_per_token},
                        "fits": {p.name: list(plan.fits[p.name]) for p in plan.places},
                        "free": {p.name: p.free for p in plan.places}},
        "plan_lines": render_plan(plan),
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
    plan_lines = info.pop("plan_lines", [])
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    info.pop("memory_plan", None)
    for key, value in info.items():
        if key.endswith("bytes") or key.endswith("bytes_per_token"):
            value = f"{value / 2**20:,.1f} MiB" if value >= 2**20 else f"{value:,} B"
        elif key == "params":
            value = f"{value / 1e6:,.1f}M"
        print(f"{key}: {value}")
    for line in plan_lines:
        print(line)
    return 0
