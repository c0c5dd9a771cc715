"""What per-token activation scales cost: the int8 model's step with FBGEMM fed per-row quantised
rows (engine.quantize, batch-invariant) against FBGEMM quantising the whole call with one scale
(the kernel as it was), interleaved call by call on one model so host drift lands on both.

`python -m benchmarks.int8_rows [--shape santacoder] [--threads 2] [--rounds 5] [--prefill]` prints a table of
medians (ms) and the per-round ratio's median and min-max. Random weights of the checkpoint kit's
shape are made in memory (speed does not depend on their values).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from fim_lsp.training.checkpoint_kit import SHAPES
from engine.model import KVBuffer, ModelArgs, Transformer
from engine.quantize import Int8Linear, quantize_int8


def per_call_forward(self: Int8Linear, x: torch.Tensor) -> torch.Tensor:
    """The kernel as it was: FBGEMM picks one activation scale for all rows of the call."""
    y = torch.ops.quantized.linear_dynamic(x.float(), self.packed, self.reduce_range)  # [T, N] fp32
    y = y.to(torch.bfloat16)
    return y if self.bias is None else y + self.bias


def build(shape: str, quantize=quantize_int8) -> Transformer:
    """A model of the kit's `shape` with random weights made in memory, quantised by `quantize`."""
    s = SHAPES[shape]
    args = ModelArgs(n_layer=s.n_layer, n_embd=s.n_embd, n_head=s.n_head, n_positions=s.n_positions,
                     vocab_size=s.vocab_size, multi_query=True)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = Transformer(args)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, s.init_std)
    return quantize(model.eval())


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3  # ms


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="santacoder")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--prefill", action="store_true", help="also time a 512-token prefill (slow on 2 cores)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = build(a.shape)
    ctx = a.context
    kv = KVBuffer(model.args, ctx + 16, torch.bfloat16)
    ids = torch.randint(0, model.args.vocab_size, (ctx + 16,))
    per_row = Int8Linear.forward
    kernels = {"per-call (FBGEMM as it was)": per_call_forward, "per-row (batch-invariant)": per_row}
    with torch.inference_mode():
        model(ids[:ctx], torch.arange(ctx), kv, 0, last_only=True)  # the context the steps attend over

        def step():  # one decode step at position ctx (rewritten each call)
            model(ids[ctx:ctx + 1], torch.tensor([ctx]), kv, ctx)

        def verify8():  # an 8-token speculative verification
            model(ids[ctx:ctx + 8], torch.arange(ctx, ctx + 8), kv, ctx)

        def prefill512():
            model(ids[:512], torch.arange(512), kv, 0, last_only=True)

        cases = {"decode step (1k context)": (step, 8), "8-token verify": (verify8, 4)}
        if a.prefill:
            cases["prefill 512"] = (prefill512, 1)
        results = {(c, k): [] for c in cases for k in kernels}
        for r in range(a.rounds):
            order = list(kernels) if r % 2 == 0 else list(reversed(kernels))  # ABBA
            for case, (fn, reps) in cases.items():
                for name in order:
                    Int8Linear.forward = kernels[name]
                    fn()  # warm
                    results[case, name].append(statistics.median(timed(fn) for _ in range(reps)))
        Int8Linear.forward = per_row
    old, new = kernels
    print(f"int8 rows: shape {a.shape}, {a.threads} threads, {a.rounds} rounds (ABBA), ms (median of rounds)")
    print("| case | per-call ms | per-row ms | per-row / per-call: median (min-max) |")
    print("|---|---|---|---|")
    for case in cases:
        ratios = [n / o for o, n in zip(results[case, old], results[case, new])]
        print(f"| {case} | {statistics.median(results[case, old]):.1f} | {statistics.median(results[case, new]):.1f} | "
              f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) |")


if __name__ == "__main__":
    main()
