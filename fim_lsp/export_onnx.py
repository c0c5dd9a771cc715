"""`fim-lsp export-onnx`: export a checkpoint to ONNX (optionally int8) with a progress bar."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from engine.loading import CheckpointError, resolve_checkpoint
from engine.onnx_export import FP32_FILE, INT8_FILE, ExportError, export
from engine.select import resolve_model_name

def main_export(args) -> int:
    """`fim-lsp export-onnx --model M --out DIR [--int8] [--opset N]`."""
    from tqdm import tqdm

    steps = ["hashing", "loading", "tracing", "checking"] + (["quantising", "agreement"] if args.int8 else [])
    bar = tqdm(total=len(steps), desc="export-onnx", unit="step", file=sys.stderr)

    def progress(step: str) -> None:
        if bar.desc != "export-onnx":  # the previous step is done
            bar.update(1)
        bar.set_description(step)

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        src = resolve_checkpoint(resolve_model_name(args.model), args.revision)
        started = time.perf_counter()
        manifest = export(src, args.out, int8=args.int8, opset=args.opset, progress=progress)
    except (ExportError, CheckpointError) as exc:
        bar.close()
        print(f"fim-lsp export-onnx: {exc}", file=sys.stderr)
        return 2
    bar.update(bar.total - bar.n)
    bar.close()
    out = Path(args.out)
    size = sum(f.stat().st_size for f in out.iterdir() if f.name.startswith(FP32_FILE)) / 2**20
    print(f"exported {src} -> {out / FP32_FILE} ({size:.0f} MiB, opset {manifest.opset}) "
          f"in {time.perf_counter() - started:.0f} s; ORT vs torch max |diff| {manifest.parity_max_abs:.1e}")
    if manifest.int8_agreement is not None:
        q = (out / INT8_FILE).stat().st_size / 2**20
        print(f"int8: {out / INT8_FILE} ({q:.0f} MiB); greedy agreement with fp32 "
              f"{manifest.int8_agreement:.1%} of teacher-forced steps on sample prompts")
    return 0
