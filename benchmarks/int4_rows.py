"""What 4-bit weights (engine.int4, `--dtype int4`) give against int8 (engine.quantize) on the CPU:
weight bytes, a decode step at 1k context against the bandwidth floor, a 1k prefill, and greedy
agreement with fp32 on the bundled trained model.

`python -m benchmarks.int4_rows [--shape santacoder] [--threads 2] [--rounds 3] [--agreement]` prints
tables. Speed: random weights of the checkpoint kit's shape made in memory (speed does not depend on
their values), the int8 and int4 models alternated ABBA round by round so host drift lands on
both; medians of rounds. The floor is the bytes a step reads (every matrix and the LM head; the
embedding tables are only gathered from) over `measure_bandwidth`. `--agreement` adds the replay of
`benchmarks.backends.trained_agreement` (20 HumanEval problems x 12 keys, 8 greedy tokens a
keystroke, 1 thread) for torch fp32 / int8 / int4 / bf16, and the weights' quantisation error per
group size on the bundled model's matrices.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from torch import nn

from benchmarks.int8_rows import build
from benchmarks.keystroke_replay import measure_bandwidth
from engine.int4 import GROUP_SIZES, dequantize_groups, quantize_groups, quantize_int4
from engine.model import KVBuffer, Transformer
from engine.quantize import quantize_int8, weight_bytes


def step_bytes(model: Transformer) -> int:
    """Bytes a decode step reads: all but the embedding tables (one row gathered from each)."""
    gathered = model.wte.weight.nbytes + model.wpe.weight.nbytes
    return weight_bytes(model) - gathered


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start  # s


def speed(a) -> None:
    say = lambda msg: print(f"int4_rows: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    models = {}
    for name, quantize in (("int8", quantize_int8), ("int4", quantize_int4)):
        say(f"building {a.shape} {name}")
        models[name] = build(a.shape, quantize)
    bandwidth = measure_bandwidth(threads=a.threads)
    ctx = a.context
    args = models["int8"].args
    ids = torch.randint(0, args.vocab_size, (ctx + 16,))
    kvs = {name: KVBuffer(args, ctx + 16, torch.bfloat16) for name in models}
    results = {(case, name): [] for case in ("step", "prefill") for name in models}
    with torch.inference_mode():
        for r in range(a.rounds):
            order = list(models) if r % 2 == 0 else list(reversed(models))  # ABBA
            for name in order:
                model, kv = models[name], kvs[name]
                say(f"round {r + 1}: {name} prefill {ctx}")
                results["prefill", name].append(timed(lambda: model(ids[:ctx], torch.arange(ctx), kv, 0,
                                                                    last_only=True)))
                step = lambda: model(ids[ctx:ctx + 1], torch.tensor([ctx]), kv, ctx)  # noqa: E731
                step()  # warm
                results["step", name].append(statistics.median(timed(step) for _ in range(a.steps)))
    print(f"int4 vs int8: shape {a.shape}, {a.threads} threads, {a.rounds} rounds (ABBA), {ctx}-token context, "
          f"bandwidth {bandwidth / 1e9:.1f} GB/s (torch sum)")
    print("| weights | weight bytes (MiB) | step reads (MiB) | decode s/token | floor s/token | x floor "
          f"| prefill {ctx} s |")
    print("|---|---|---|---|---|---|---|")
    for name, model in models.items():
        reads = step_bytes(model)
        step_s = statistics.median(results["step", name])
        floor = reads / bandwidth
        print(f"| {name} | {weight_bytes(model) / 2**20:,.0f} | {reads / 2**20:,.0f} | {step_s:.4f} | {floor:.4f} "
              f"| {step_s / floor:.1f} | {statistics.median(results['prefill', name]):.1f} |")
    ratios = [b / a_ for a_, b in zip(results["step", "int8"], results["step", "int4"])]
    print(f"int4 / int8 decode step: median {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})")


def group_errors() -> None:
    """Relative Frobenius error of the bundled model's matrices per group size."""
    from engine.loading import load_model
    from engine.select import DEFAULT_MODEL_DIR

    model = load_model(str(DEFAULT_MODEL_DIR), torch.device("cpu"), torch.float32).model
    weights = [m.weight.detach() for m in model.modules() if isinstance(m, nn.Linear)] + [model.wte.weight.detach()]
    print("| group size | weights' relative error (all matrices) |\n|---|---|")
    for g in GROUP_SIZES:
        err = sum((dequantize_groups(*quantize_groups(w, g)) - w).norm() ** 2 for w in weights)
        print(f"| {g} | {(err / sum(w.norm() ** 2 for w in weights)).sqrt():.4f} |")


def agreement(a) -> None:
    from benchmarks.backends import trained_agreement

    say = lambda msg: print(f"int4_rows: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    rows = trained_agreement(a.problems, a.max_keys, 1, say,
                             modes=("torch fp32", "torch int8", "torch int4", "torch bf16"))
    print(f"greedy agreement with torch fp32, bundled model, {a.problems} problems x {a.max_keys} keys, 1 thread")
    print("| path | same keystrokes | token agreement |\n|---|---|---|")
    for r in rows or []:
        print(f"| {r['mode']} | {r['same_keystrokes']:.1%} | {r['token_agreement']:.1%} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="santacoder")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8, help="decode steps timed per round (median)")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--agreement", action="store_true")
    ap.add_argument("--problems", type=int, default=20)
    ap.add_argument("--max-keys", type=int, default=12)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if not a.no_speed:
        speed(a)
    if a.agreement:
        group_errors()
        agreement(a)


if __name__ == "__main__":
    main()
